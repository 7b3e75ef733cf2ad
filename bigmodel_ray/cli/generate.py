"""`bigmodel-ray generate RUN --prompt TEXT`: continue a prompt with a language model run
(`train.task: lm`), tokenized with the run's own tokenizer. Greedy by default (the same text
every time); `--temperature T` samples, over the `--top-k K` likeliest tokens when K > 0."""


from bigmodel_ray.errors import SpecError
from bigmodel_ray.storage import open_uri


def add_parser(sub) -> None:
    c = sub.add_parser("generate", help="continue a prompt with a language model run (train.task: lm)")
    c.add_argument("run", help="a finished language model run folder")
    c.add_argument("--prompt", required=True, help="text to continue")
    c.add_argument("--max-tokens", type=int, default=40, help="tokens to add at most (default 40)")
    c.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    c.add_argument("--top-k", type=int, default=0, help="sample among the K likeliest tokens (0: all)")
    c.add_argument("--samples", type=int, default=1, help="continuations to print (sampling only)")
    c.add_argument("--seed", type=int, default=0, help="seeds the sampling")


def run(args) -> int:
    import torch
    from tokenizers import Tokenizer

    from bigmodel_ray import runs
    from bigmodel_ray.data.text import TOKENIZER_FILE
    from bigmodel_ray.train.state import load_model

    folder = open_uri(args.run)
    if not runs.finished(folder):
        raise SpecError(f"{folder}: not a finished run folder (no result.json with a checkpoint)")
    if args.max_tokens < 1 or args.temperature < 0 or args.top_k < 0 or args.samples < 1:
        raise SpecError(f"{folder}: --max-tokens and --samples must be >= 1, --temperature and --top-k >= 0")
    model = load_model(runs.result_checkpoint(folder))
    if not hasattr(model, "generate") or not (folder / TOKENIZER_FILE).exists():
        raise SpecError(f"{folder}: not a language model run (train.task: lm with model text_lm)")
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    prompt = torch.tensor(tokenizer.encode(args.prompt).ids)
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.samples if args.temperature > 0 else 1):
        ids = model.generate(prompt, args.max_tokens, args.temperature, args.top_k, generator)
        print(tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip())
    return 0
