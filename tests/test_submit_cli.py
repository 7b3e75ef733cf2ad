"""The cluster-facing CLI without a cluster: launcher commands, token lookup, missing addresses."""

import pytest
from conftest import ROOT

from bigmodel_ray import cluster, submit
from bigmodel_ray.cli import main
from bigmodel_ray.spec import SpecError


def test_cluster_verbs_run_rays_own_launcher_commands(monkeypatch):
    f = str(ROOT / "cluster" / "aws.yaml")
    # Without the cloud's SDK here, Ray's launcher would fail with a traceback: one line instead.
    monkeypatch.setitem(cluster.PROVIDER_SDKS, "aws", ("bigmodel_ray_no_such_sdk", "aws"))
    with pytest.raises(SpecError, match=r"aws.yaml: provider.type: aws needs its SDK \(bigmodel_ray_no_such_sdk\) "
                                        r"on this machine: pip install -e '.\[aws\]'$"):
        cluster.commands("up", f, yes=True)
    monkeypatch.setitem(cluster.PROVIDER_SDKS, "aws", ("json", "aws"))      # an installed module stands in for boto3
    (up,) = cluster.commands("up", f, yes=True)
    assert up[1:] == ["up", f, "-y"] and up[0].endswith("ray")
    (down,) = cluster.commands("down", f, yes=False)
    assert down[1:] == ["down", f]
    head_ip, status = cluster.commands("status", f, yes=False)
    assert head_ip[1:] == ["get-head-ip", f]
    assert status[1:3] == ["exec", f] and "RAY_AUTH_MODE=token" in status[3] and status[3].endswith("ray status")
    with pytest.raises(SpecError, match="no such cluster file"):
        cluster.commands("up", "cluster/nope.yaml", yes=True)


def test_token_comes_from_env_then_file_then_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert submit.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    (tmp_path / ".ray" / "auth_token").chmod(0o644)
    assert submit.auth_headers() == {"Authorization": "Bearer home-token"}
    assert "auth_token is readable by other users of this machine: chmod 600" in capsys.readouterr().err
    (tmp_path / ".ray" / "auth_token").chmod(0o600)
    assert submit.auth_headers() == {"Authorization": "Bearer home-token"} and capsys.readouterr().err == ""
    (tmp_path / "t").write_text("file-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert submit.auth_headers() == {"Authorization": "Bearer file-token"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert submit.auth_headers() == {"Authorization": "Bearer env-token"}


def test_jobs_commands_need_an_address(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))              # no token of this machine's user
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["list"]) == 2
    assert capsys.readouterr().err.strip() == "error: list: give --address http://HOST:8265 or --cluster cluster/FILE.yaml"
    assert main(["status", "x", "--address", "http://127.0.0.1:9"]) == 2     # nothing listens there
    assert capsys.readouterr().err.startswith("error: http://127.0.0.1:9: ")


def test_a_bad_job_is_rejected_before_submission(tmp_path, capsys):
    job = tmp_path / "bad.yaml"
    job.write_text("data: {source: mnist1d}\nmodel: {name: mlp}\ntrain: {epochs: 0}\n")
    assert main(["submit", str(job), "--address", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {job}: train.epochs: must be > 0 (got 0)"


def test_a_cluster_python_without_the_package_is_named_in_one_line():
    import subprocess
    import sys

    from bigmodel_ray.submit import missing_project

    # What a node's Python prints when the package is not installed there (-S: no site-packages).
    failed = subprocess.run([sys.executable, "-S", "-m", "bigmodel_ray.cli", "run", "job.yaml"],
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert failed.returncode != 0
    line = missing_project(failed.stdout + failed.stderr)
    assert line is not None and "--working-dir" in line and "\n" not in line
    assert missing_project("Traceback ...\nModuleNotFoundError: No module named 'torchvision'") is None
