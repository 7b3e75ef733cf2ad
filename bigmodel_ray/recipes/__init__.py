"""One module per job kind, each a top-to-bottom story: resolve -> run on Ray -> write results."""


def plan_for(spec, source: str, say=print):
    """The training plan of a train, transfer or multitask job: what a sweep's trial trains.
    Returns the spec (completed from a transfer source run) and the plan."""
    from bigmodel_ray.recipes import multitask, train, transfer

    if spec.kind == "transfer":
        spec, job, _ = transfer.plan(spec, source, say)
        return spec, job
    if spec.kind == "multitask":
        return spec, multitask.plan(spec, source)
    return spec, train.plan(spec, source)
