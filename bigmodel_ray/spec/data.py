"""The `data` section: where rows come from, how they are split, decoded, shifted and augmented
(bigmodel_ray.data reads it)."""

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from bigmodel_ray.data import SOURCES
from bigmodel_ray.spec.common import MAX_SEED, PathStr, Section, plain_data

# OpenCV's warps and resizes take images under 32,767 pixels a side.
Side = Annotated[int, Field(ge=1, le=32_767)]
MAX_SCALE = 100.0       # zoom, brightness and shift scale factors


class AugmentSpec(Section):
    """Keras ImageDataGenerator-style random augmentation of the train split (see data/augment.py)."""
    rotation_range: float = Field(0.0, ge=0, le=180, description="degrees: uniform in [-r, r]")
    width_shift_range: float = Field(0.0, ge=0, lt=1, description="fraction of the width: uniform in [-s, s]")
    height_shift_range: float = Field(0.0, ge=0, lt=1, description="fraction of the height")
    shear_range: float = Field(0.0, ge=0, lt=90, description="degrees: uniform in [-s, s]")
    zoom_range: tuple[float, float] = Field((1.0, 1.0), description="[lo, hi] scale factors, x and y drawn independently")
    horizontal_flip: bool = Field(False, description="mirror left-right with probability 1/2")
    vertical_flip: bool = Field(False, description="mirror top-bottom with probability 1/2")
    fill_mode: Literal["nearest", "constant", "reflect", "wrap"] = Field(
        "nearest", description="what fills pixels moved in from outside the image")
    cval: float = Field(0.0, ge=0, le=1, description="fill value for fill_mode constant: 0 black .. 1 white")
    brightness_range: tuple[float, float] | None = Field(None, description="[lo, hi]: multiply pixels by U(lo, hi)")
    on: Literal["data", "device"] = Field("data", description="data: OpenCV in Ray Data tasks; device: "
                                                             "grid_sample on the training device (GPU)")

    @field_validator("zoom_range", "brightness_range")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not 0 < v[0] <= v[1] <= MAX_SCALE:
            raise ValueError(f"must be [lo, hi] with 0 < lo <= hi <= {MAX_SCALE:g}")
        return v


class NormalizeSpec(Section):
    mean: list[float] = Field(description="per channel, after scaling pixels to 0..1")
    std: list[float] = Field(description="per channel")

    @field_validator("std")
    @classmethod
    def _positive(cls, v, info):
        if any(s <= 0 for s in v):
            raise ValueError("must be > 0")
        if len(v) != len(info.data.get("mean", v)):
            raise ValueError("must have as many entries as mean")
        return v


class ShiftSpec(Section):
    """The same data, shifted: a target domain made from a real source (see data/shift.py).
    Every split alike, before the train split's augmentation."""
    rotation: float = Field(0.0, ge=-180, le=180, description="degrees, every image alike (2-D only)")
    scale: float = Field(1.0, gt=0, le=MAX_SCALE, description="zoom about the centre (images) or stretch (series)")
    invert: bool = Field(False, description="min + max - x (255 - x for image files): dark on light "
                                            "becomes light on dark")
    noise: float = Field(0.0, ge=0, le=MAX_SCALE, description="Gaussian noise, as a share of the value range")
    blur: float = Field(0.0, ge=0, le=1000, description="Gaussian blur sigma, in pixels / steps")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the noise (with each row's key: the same noise every epoch)")


class TextSpec(Section):
    """Text rows: the columns joined, tokenized in Ray Data tasks by a Hugging Face `tokenizers`
    tokenizer trained on the train split (data/text.py)."""
    columns: list[str] = Field(min_length=1, description="text column(s), joined by a newline (e.g. [Title, Review Text])")
    tokenizer: Literal["bpe", "wordpiece"] = Field("bpe", description="the tokenizer trained on the train split "
                                                                      "(saved in the run folder, reused on resume)")
    vocab_size: int = Field(8000, ge=64, le=1_000_000, description="the trained tokenizer's vocabulary, special tokens included")
    max_length: int = Field(128, ge=2, le=65536, description="tokens kept per row ([CLS] included); longer rows are truncated")
    lowercase: bool = Field(True, description="lowercase text before tokenizing")
    tokenizer_file: PathStr | None = Field(None, description="use this tokenizer.json instead of training one (or a "
                                                         "folder holding it: a language model run's, to fine-tune "
                                                         "from it); [PAD] must be id 0; vocab_size must cover it")


class InteractionsSpec(Section):
    """User-item interactions for recommenders (data/interactions.py); movielens fills the columns."""
    user_column: str = Field("user", max_length=200, description="user ids (any type)")
    item_column: str = Field("item", max_length=200, description="item ids (any type)")
    rating_column: str | None = Field("rating", max_length=200, description="explicit ratings (train.task: rating); "
                                                                          "null for implicit feedback")
    time_column: str | None = Field(None, max_length=200, description="timestamps (split: leave_last_out)")
    split: Literal["random", "leave_last_out"] = Field("random", description=(
        "random: rows by hash (test_fraction, val_fraction); leave_last_out: each user's last interaction is test, "
        "the one before it val"))
    negatives: int = Field(99, ge=1, le=10_000, description="train.task: ranking — items the user never interacted "
                                                            "with, ranked against each held-out one (HR@10, NDCG@10)")
    train_negatives: int = Field(4, ge=1, le=1_000, description="train.task: ranking — random items drawn per "
                                                                "interaction while training")


FILE_SOURCES = ("parquet", "image_folder", "text", "interactions")
INTERACTION_SOURCES = ("interactions", "movielens")     # movielens: `bigmodel-ray data fetch movielens`
MOVIELENS_COLUMNS = {"user_column": "user_id", "item_column": "movie_id", "rating_column": "rating",
                     "time_column": "timestamp"}
TEXT_SOURCES = ("text", "reviews")     # reviews: `bigmodel-ray data fetch reviews`, real e-commerce reviews
REVIEW_COLUMNS = ["Title", "Review Text"]


class DataSpec(Section):
    source: str = Field(description="built-in set or a source kind: " + " | ".join(SOURCES))
    path: PathStr | None = Field(None, description="parquet: file, folder, glob or URI (s3://, gs://); "
                                                "image_folder: a folder of class subfolders")
    image_column: str = Field("image", description="parquet: column of encoded (PNG/JPEG) bytes or raw pixels")
    label_column: str = Field("label", description="parquet: integer class column; text: integer or string classes "
                                                   "(class names sorted)")
    split_column: str | None = Field(None, max_length=200, description=(
        "parquet, text: a column naming each row's split (train / val / test; also training, valid, validation, "
        "dev, testing; any case) instead of a split by row hash; without val rows, val is carved from train "
        "(val_fraction)"))
    image_format: Literal["encoded", "raw"] = Field("encoded", description="parquet: how images are stored")
    image_shape: tuple[Side, Side, Literal[1, 3]] | None = Field(
        None, description="parquet raw: [height, width, channels] (uint8)")
    target_size: tuple[Side, Side] | None = Field(None, description="resize every image to [height, width]")
    color_mode: Literal["rgb", "grayscale"] = Field("rgb", description="decoded channels")
    count: int = Field(10_000, gt=0, le=10**9, description="synthetic: number of images")
    image_size: int = Field(64, ge=8, le=4096, description="synthetic: height and width")
    num_classes: int = Field(10, ge=2, le=1_000_000, description="synthetic: classes")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training rows held out for validation")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="share held out for test where the set has no test split")
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="fixes the train/val/test split, independent of the job seed")
    in_memory: bool | Literal["auto"] = Field("auto", description="workers keep val/test (and un-augmented train) in "
                                                                  "memory after the first pass; auto: built-in sets and reviews")
    normalize: NormalizeSpec | None = Field(None, description="per-channel mean/std after scaling to 0..1")
    augment: AugmentSpec | None = Field(None, description="random augmentation of the train split")
    on_bad_record: Literal["fail", "skip"] = Field("fail", description="a bad record (an image that does not decode "
                                                                       "or is too large, a label outside the classes): "
                                                                       "stop naming it, or drop it and report the "
                                                                       "count at the end")
    max_image_pixels: int = Field(64_000_000, gt=0, le=1 << 40, description="width x height read from an image's "
                                                                             "header before decoding; larger images "
                                                                             "are bad records")
    shift: ShiftSpec | None = Field(None, description="a shifted copy of the data (a target domain), any source")
    text: TextSpec | None = Field(None, description="text sources: the text columns and the tokenizer (reviews: "
                                                    "[Title, Review Text] by default)")
    interactions: InteractionsSpec | None = Field(None, description="interaction sources: columns and split "
                                                                    "(movielens: its columns by default)")
    generator: dict[str, Any] | None = Field(
        None, description="mnist1d: arguments of the mnist1d generator that change the data, e.g. {scale_coeff: 0.6, "
                          "iid_noise_scale: 0.1, corr_noise_scale: 0.5, shear_scale: 1.2, max_translation: 60, seed: 7}")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v):
        if v not in SOURCES:
            raise ValueError(f"must be one of {' | '.join(SOURCES)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _review_columns(cls, v):
        if isinstance(v, dict) and v.get("source") == "reviews" and v.get("text") is None:
            v = {**v, "text": {"columns": REVIEW_COLUMNS}}
        if isinstance(v, dict) and v.get("source") == "movielens":
            given = v.get("interactions") or {}
            if isinstance(given, dict):
                v = {**v, "interactions": {**MOVIELENS_COLUMNS, **given}}
        if isinstance(v, dict) and v.get("source") == "interactions" and v.get("interactions") is None:
            v = {**v, "interactions": {}}
        return v

    @model_validator(mode="after")
    def _fits_source(self):
        if self.source in FILE_SOURCES and not self.path:
            raise ValueError(f"path: required for source {self.source}")
        if self.source not in FILE_SOURCES and self.path:
            raise ValueError(f"path: only for sources {' | '.join(FILE_SOURCES)} (source is {self.source})")
        if (self.source in TEXT_SOURCES) != (self.text is not None):
            raise ValueError(f"text: {'required' if self.text is None else 'only'} for text sources "
                             f"({' | '.join(TEXT_SOURCES)}; source is {self.source})")
        if (self.source in INTERACTION_SOURCES) != (self.interactions is not None):
            raise ValueError(f"interactions: only for sources {' | '.join(INTERACTION_SOURCES)} (source is {self.source})")
        for key in ("augment", "shift", "normalize"):
            if (self.text is not None or self.interactions is not None) and getattr(self, key) is not None:
                raise ValueError(f"{key}: for images and series, not {'text' if self.text else 'interactions'}")
        if self.interactions is not None and self.in_memory is False:
            raise ValueError("in_memory: interactions are always kept in memory (ids: a few bytes per row)")
        if self.split_column is not None and self.source not in ("parquet", "text"):
            raise ValueError(f"split_column: for sources parquet and text (source is {self.source})")
        if self.image_format == "raw" and self.image_shape is None:
            raise ValueError("image_shape: required when image_format is raw ([height, width, channels])")
        if self.source == "mnist1d" and self.augment is not None:
            raise ValueError("augment: needs 2-D images; mnist1d is 1-D")
        if self.shift is not None and self.source == "mnist1d" and self.shift.rotation:
            raise ValueError("shift: rotation needs 2-D images; mnist1d is 1-D")
        if self.generator is not None:
            if self.source != "mnist1d":
                raise ValueError(f"generator: only for source mnist1d (source is {self.source})")
            try:
                from bigmodel_ray.data.builtin import check_mnist1d_args

                plain_data(self.generator)
                check_mnist1d_args(self.generator)
            except ValueError as e:
                raise ValueError(f"generator: {e}") from None
        return self

    @property
    def keep_in_memory(self) -> bool:
        # auto: the built-in sets and the reviews (token ids: ~12 MB): small enough for every worker
        if self.interactions is not None:
            return True
        return self.source in ("digits", "mnist1d", "reviews") if self.in_memory == "auto" else self.in_memory

