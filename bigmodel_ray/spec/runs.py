"""Jobs that start from another run (KindSection.run_input): a compress job's teacher, a
transfer job's source.

Given a run folder, the job takes that run's model, and its data (for compress: the job's data;
for transfer: the source domain) unless the job names other data. The run folder's spec.yaml
holds both; a multitask run's data is its task's (`<key>_task`), whose classifier (the backbone
and that task's head) the job then takes. A transfer from a language model run takes the
classifier of the same architecture (text_lm -> text_transformer), started from the LM's weights.
"""

from pathlib import Path

import yaml

from bigmodel_ray.errors import SpecError
from bigmodel_ray.models import CLASSIFIER_OF
from bigmodel_ray.spec.job import SECTION_OF_KIND


def with_run_sections(raw: dict, source: str) -> dict:
    """The raw job with the model (and data) of the run folder its kind's section names."""
    kind = raw.get("kind")
    section_type = SECTION_OF_KIND.get(kind) if isinstance(kind, str) else None
    given = section_type.run_input if section_type is not None else None
    section = raw.get(kind) if given is not None else None
    run = section.get(given.key) if isinstance(section, dict) else None
    if not isinstance(run, str):
        return raw
    try:
        run_raw = yaml.safe_load((Path(run).expanduser() / "spec.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return raw        # not trained yet: the job validates, running it says what is missing
    model = run_raw.get("model")
    if given.fine_tunes and isinstance(model, dict) and model.get("name") in CLASSIFIER_OF:
        model = {"name": CLASSIFIER_OF[model["name"]], "args": model.get("args") or {}}   # a language model's
    if "model" in raw and raw["model"] != model:
        raise SpecError(f"{source}: model: a {kind} job takes its {given.what}'s model; remove this section")
    data = _run_data(run_raw, section.get(f"{given.key}_task"), source, f"{kind}.{given.key}")
    out = {**raw, "model": model}
    *parents, leaf = given.data_path
    node = out
    for key in parents:                 # copy the path down, so the caller's dict stays as it was
        node[key] = dict(node[key])
        node = node[key]
    node.setdefault(leaf, data)
    return out


def _run_data(run_raw: dict, task, source: str, field: str):
    if run_raw.get("kind") != "multitask":
        if task is not None:
            raise SpecError(f"{source}: {field}_task: {task!r}: the run is a single classifier, not multitask")
        return run_raw.get("data")
    tasks = ((run_raw.get("multitask") or {}).get("tasks") or {})
    if task not in tasks:
        which = "required" if task is None else f"{task!r} is not one"
        raise SpecError(f"{source}: {field}_task: {which}: the run is multitask, with tasks {', '.join(tasks)}")
    return tasks[task].get("data")
