"""Jobs that start from another run (KindSection.run_input): a compress job's teacher, a
transfer job's source.

Given a run folder, the job takes that run's model, and its data (for compress: the job's data;
for transfer: the source domain) unless the job names other data. The run folder's spec.yaml
holds both; a multitask run's data is its task's (`<key>_task`), whose classifier (the backbone
and that task's head) the job then takes. A transfer from a language model run takes the
classifier of the same architecture (text_lm -> text_transformer), started from the LM's weights.
"""


from bigmodel_ray.errors import SpecError
from bigmodel_ray.models import CLASSIFIER_OF
from bigmodel_ray.spec.job import SECTION_OF_KIND
from bigmodel_ray.spec.messages import cut, shown
from bigmodel_ray.spec.yaml_input import BadYAML, read_yaml
from bigmodel_ray.storage import open_uri


def with_run_sections(raw: dict, source: str) -> dict:
    """The raw job with the model (and data) of the run folder its kind's section names."""
    kind = raw.get("kind")
    section_type = SECTION_OF_KIND.get(kind) if isinstance(kind, str) else None
    given = section_type.run_input if section_type is not None else None
    section = raw.get(kind) if given is not None else None
    run = section.get(given.key) if isinstance(section, dict) else None
    if not isinstance(run, str):
        return raw
    options = raw.get("storage_options")
    try:
        run_raw = read_yaml(open_uri(run, options if isinstance(options, dict) else None) / "spec.yaml")
    except (OSError, RuntimeError, ValueError):      # RuntimeError: ~user of no such user; ValueError: bad storage
        return raw        # not trained yet: the job validates, running it says what is missing
    except BadYAML as e:
        raise SpecError(f"{source}: {kind}.{given.key}: {cut(run)}/spec.yaml: {e}") from None
    if not isinstance(run_raw, dict):
        raise SpecError(f"{source}: {kind}.{given.key}: {cut(run)}/spec.yaml is not a job spec (a mapping of "
                        f"sections); got {type(run_raw).__name__}")
    model = run_raw.get("model")
    if given.fine_tunes and isinstance(model, dict) and isinstance(model.get("name"), str) \
            and model["name"] in CLASSIFIER_OF:
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
            raise SpecError(f"{source}: {field}_task: {shown(task)}: the run is a single classifier, not multitask")
        return run_raw.get("data")
    section = run_raw.get("multitask")
    tasks = section.get("tasks") if isinstance(section, dict) else None
    if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
        raise SpecError(f"{source}: {field}: the run's spec.yaml has no multitask.tasks mapping of tasks")
    if not isinstance(task, str) or task not in tasks:
        which = "required" if task is None else f"{shown(task)} is not one"
        names = ", ".join(cut(str(name)) for name in list(tasks)[:20])
        raise SpecError(f"{source}: {field}_task: {which}: the run is multitask, with tasks {names}")
    return tasks[task].get("data")
