"""`bigmodel-ray recommend RUN --user ID -k 10`: a recommender run's top-k items for one user,
among the items the user has not interacted with in the run's data (titles where the set has
them: MovieLens)."""

import json

from bigmodel_ray.errors import SpecError
from bigmodel_ray.storage import open_uri


def add_parser(sub) -> None:
    c = sub.add_parser("recommend", help="top-k unseen items for a user, from a recommender run (train.task: "
                                         "rating | ranking)")
    c.add_argument("run", help="a finished recommender run folder")
    c.add_argument("--user", required=True, help="the user's id as in the data (e.g. 196)")
    c.add_argument("-k", type=int, default=10, help="items to list (default 10)")


def run(args) -> int:
    import torch

    from bigmodel_ray import runs
    from bigmodel_ray.data.interactions import IDS_FILE, read_interactions, titles
    from bigmodel_ray.predict.run import read_run_data, read_run_job
    from bigmodel_ray.train.state import load_model

    folder = open_uri(args.run)
    if not runs.finished(folder):
        raise SpecError(f"{folder}: not a finished run folder (no result.json with a checkpoint)")
    if not (folder / IDS_FILE).exists():
        raise SpecError(f"{folder}: not a recommender run (train.task: rating | ranking on interactions)")
    ids = json.loads((folder / IDS_FILE).read_text())
    users = {str(u): i for i, u in enumerate(ids["users"])}
    if args.user not in users:
        raise SpecError(f"{folder}: no user {args.user!r} in the run's data ({len(users):,} users, e.g. "
                        f"{', '.join(list(users)[:3])})")
    if not 1 <= args.k <= len(ids["items"]):
        raise SpecError(f"-k must be in 1..{len(ids['items'])} (the run's items)")
    data = read_run_data(folder)
    seen = read_interactions(data)
    user = users[args.user]
    if seen.item_ids != ids["items"] or seen.user_ids != ids["users"]:
        raise SpecError(f"{folder}: the run's data ({data.path or data.source}) has changed since training: "
                        f"its users or items differ from the run's")
    model = load_model(runs.result_checkpoint(folder))
    items = torch.arange(len(ids["items"]))
    with torch.no_grad():
        scores = model(torch.cat([torch.tensor([user]), items]).unsqueeze(0))[0]
    history = seen.items[seen.users == user]
    scores[torch.from_numpy(history)] = float("-inf")
    top = scores.topk(args.k)
    named = titles(data)
    task = read_run_job(folder)["train"]["task"]
    unseen = len(ids["items"]) - len(history)
    print(f"user {args.user}: top {args.k} of the {unseen:,} items not in the user's history "
          f"({'predicted rating' if task == 'rating' else 'ranking score, higher first'})")
    print(f"{'rank':>4}  {'item':>8}  {'score':>7}" + ("  title" if named else ""))
    for rank, (score, item) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
        raw = ids["items"][item]
        title = named.get(str(raw), "")
        print(f"{rank:>4}  {raw!s:>8}  {score:>7.3f}" + (f"  {title}" if named else ""))
    return 0
