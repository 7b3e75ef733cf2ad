"""The project's text jobs vs TF-IDF + logistic regression, on the same rows of the same split;
and a language model of the reviews vs gzip, and the classifiers fine-tuned from it.

For each classifier job (default: reviews_recommend, reviews_department, and the same two
fine-tuned from reviews_lm: reviews_recommend_pretrained, reviews_pretrained) the train and test
rows are taken through the job's own pipeline (data/text.py: the same hash split, the same
joined title + review, the same rows without text dropped), a TF-IDF (1-2 grams, min_df 2,
sublinear tf) + logistic regression (C=4) is fitted on the train rows, and the job is trained
as shipped (Ray Train, 2 DDP workers). The language model job (reviews_lm) reports test bits
per character beside gzip -9's on the same text. Printed: test accuracy and macro-F1 of both,
the difference, and the LM's numbers.
Needs `bigmodel-ray data fetch reviews` first.

    python benchmarks/text_baseline.py [JOB ...] [--storage DIR]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
JOBS = ["jobs/reviews_recommend.yaml", "jobs/reviews_department.yaml", "jobs/reviews_lm.yaml",
        "jobs/reviews_recommend_pretrained.yaml", "jobs/reviews_pretrained.yaml"]


def split_rows(spec) -> dict[str, tuple[list[str], list]]:
    """(texts, labels) of the job's train and test rows, exactly as its pipeline keeps them."""
    from bigmodel_ray.data.sources import split_shares
    from bigmodel_ray.data.text import TextTransform, _read, _texts, source_path

    path, shares = source_path(spec.data), split_shares(spec.data)
    out = {}
    for name in ("train", "test"):
        t = TextTransform(columns=tuple(spec.data.text.columns), label_column=spec.data.label_column, classes=None,
                          tokenizer_json="", max_length=spec.data.text.max_length, split_seed=spec.data.split_seed,
                          keep_share=shares[name])
        texts, labels = [], []
        for batch in _read(path, [*spec.data.text.columns, spec.data.label_column]).iter_batches(
                batch_size=4096, batch_format="numpy"):
            kept, _, keep = _texts(batch, t)
            for text, label in zip(kept, batch[spec.data.label_column][keep]):
                if text and label is not None:
                    texts.append(text)
                    labels.append(label)
        out[name] = (texts, labels)
    return out


def tfidf(rows) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    (x_train, y_train), (x_test, y_test) = rows["train"], rows["test"]
    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    clf = LogisticRegression(C=4, max_iter=2000).fit(vec.fit_transform(x_train), y_train)
    pred = clf.predict(vec.transform(x_test))
    return {"test_accuracy": accuracy_score(y_test, pred), "test_f1": f1_score(y_test, pred, average="macro"),
            "train_rows": len(y_train), "test_rows": len(y_test), "wall_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jobs", nargs="*", default=JOBS)
    p.add_argument("--storage", help="run folders here (default: a temporary folder); finished runs are reused")
    args = p.parse_args()

    from bigmodel_ray import kinds
    from bigmodel_ray.runtime import start_ray
    from bigmodel_ray.spec import load_job

    storage = args.storage or tempfile.mkdtemp(prefix="text_baseline-")
    specs = [load_job(ROOT / job, [f"storage={storage}", *_source_here(ROOT / job, storage)]) for job in args.jobs]
    start_ray(num_cpus=max(kinds.runner(s).cpus_needed(s) for s in specs))
    results, lm = {}, {}
    for job, spec in zip(args.jobs, specs):
        say = lambda line: print(f"  {line}", flush=True)  # noqa: E731
        if spec.train.task == "lm":
            print(f"{job}: training the language model ({spec.train.epochs} epochs)", flush=True)
            lm[job] = kinds.run(spec, job, say=say)
            continue
        print(f"{job}: TF-IDF + logistic regression on the job's own split", flush=True)
        baseline = tfidf(split_rows(spec))
        print(f"{job}: training the job ({spec.train.epochs} epochs, {spec.resources.workers} workers)", flush=True)
        start = time.perf_counter()
        ours = kinds.run(spec, job, say=say)
        results[job] = {"tfidf": baseline, "ours": {"test_accuracy": ours["test_accuracy"], "test_f1": ours["test_f1"],
                                                    "wall_s": time.perf_counter() - start}}

    print("\njob                              TF-IDF+LR acc / macro-F1   ours acc / macro-F1   F1 ours - TF-IDF")
    for job, r in results.items():
        b, o = r["tfidf"], r["ours"]
        print(f"{Path(job).stem:<32} {b['test_accuracy']:.4f} / {b['test_f1']:.4f}          "
              f"{o['test_accuracy']:.4f} / {o['test_f1']:.4f}       {o['test_f1'] - b['test_f1']:+.4f}")
    for job, r in lm.items():
        print(f"{Path(job).stem:<32} test bits per character {r['test_bpc']:.4f} vs gzip -9 {r['test_gzip_bpc']:.4f} "
              f"on the same {r['test_chars']:,} characters; perplexity {r['test_perplexity']:.1f}")
    print(json.dumps({"classifiers": results, "language_models": lm}, indent=2, default=float))


def _source_here(job: Path, storage: str) -> list[str]:
    """A transfer job's source run (runs/NAME) as trained by this benchmark (STORAGE/NAME)."""
    import yaml

    raw = yaml.safe_load(job.read_text())
    source = (raw.get("transfer") or {}).get("source")
    return [f"transfer.source={Path(storage) / Path(source).name}"] if isinstance(source, str) else []


if __name__ == "__main__":
    main()
