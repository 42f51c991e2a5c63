"""Amazon Arts-Crafts-Sewing × Office Products (URLLM release): two content types, the same users.

Files (``SOURCES.md`` beside the data describes them): ``items_art.csv`` and ``items_office.csv``
(real product titles, lower-cased with punctuation stripped, and a category-path-plus-brand
string), ``full_sequences/{train,valid,test}_F2.txt`` (C2DSR format, one token ``item|pos|pos``
per interaction) and ``users_amazon_ids.json`` (the Amazon reviewer id of each user index).

Content types ``arts_product`` (item ids 0..18638) and ``office_product`` (18639..38395). Events
are implicit reviews (``event="review"``, null ``value``); the source has no timestamps, so ``ts``
is null and ``seq`` is the position in the user's sequence.

Reconstructing each user's sequence. Every user has exactly two lines with the same history
(positions 0..n-1) and a different final item at position n: the C2DSR evaluation protocol holds
out one target per line. The first line's target is an Office item for 9,162 users and an Art
item for 415; the second line's target is always an Art item. Both targets are real
interactions: 375 Art items occur *only* as a second-line target, and with both targets kept
every one of the 18,639 Art items has an event (as the catalogue was built from the
interactions), while taking one line per user would leave those 375 items without any. So the
full sequence is the shared history, then the first line's target (``seq`` n), then the second
line's target (``seq`` n+1): 208,541 events (Art 110,877, Office 97,664). The relative order of
the two targets is unknown (both sit at position n in the source); the file order is kept. The
``target_line`` column marks them (1 or 2; null for the shared history), so the source's own
protocol can be reproduced; dropping ``target_line == 2`` gives the ~198,964 interactions
(Art 101,300, Office 97,664) quoted in SOURCES.md as "the longest line per user" (both lines of
a user have the same length, so that count is the first line of each user).

Caveats worth knowing:

- The cross-domain order looks constructed rather than chronological: every history starts
  with an Art item and 7,381 of 9,577 histories are an exact alternation Art, Office, Art, ...
  until one domain runs out. Order *within* a domain is the source's; the interleaving of the
  two domains should not be trusted as time order.
- 3,977 Office items of ``items_office.csv`` occur in no sequence; they stay in the catalogue.
- Sequences are capped at 101 positions in the source (12 lines reach the cap).

Categories. ``item_attribute`` is the Amazon category path and the brand run together as one
lower-cased string (``"arts crafts sewing sewing quilting rotary cutters omnigrid"``), so the
level boundaries and the brand cannot be split reliably. Each item gets: its department (the
path's top level, ``"arts crafts sewing"`` / ``"office products"``), the second level when the
string starts with a known Amazon second-level name (e.g. ``"sewing"``,
``"painting drawing art supplies"``, ``"office electronics"``), and the whole attribute string
as one fine-grained category (the deepest path plus brand). Strings that do not start with the
department (826 Art items whose attribute is just ``"arts"``, a few Office items whose attribute
is a title fragment) keep the department and the string only.

Users: ``user_id`` is the source's user index; ``amazon_id`` is the Amazon reviewer id and
``split`` the URLLM split the user belongs to (train 0-7999, test 8000-8999, valid 9000-9576).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from feedcore.datasets.reading import read_table, read_text
from feedcore.errors import DataError
from feedcore.schemas import CanonicalDataset

ARTS = "arts_product"
OFFICE = "office_product"
REVIEW = "review"
_ITEM_FILES = {ARTS: "items_art.csv", OFFICE: "items_office.csv"}
_SEQUENCE_FILES = {"train": "train_F2.txt", "valid": "valid_F2.txt", "test": "test_F2.txt"}
_DEPARTMENTS = {ARTS: "arts crafts sewing", OFFICE: "office products"}
# Amazon's second-level category names under each department, as they appear after lower-casing
# and stripping punctuation. Longer names first, so "fabric decorating" wins over "fabric".
_SECOND_LEVEL = {
    ARTS: (
        "painting drawing art supplies", "organization storage transport", "party decorations supplies",
        "beading jewelry making", "gift wrapping supplies", "scrapbooking stamping", "fabric decorating",
        "knitting crochet", "needlework", "printmaking", "crafting", "sewing", "fabric",
    ),
    OFFICE: ("office furniture lighting", "office school supplies", "office electronics"),
}


def load_amazon_arts_office(root: str | Path) -> CanonicalDataset:
    """Amazon Arts × Office (URLLM): 9,577 users, 18,639 Art + 19,757 Office items, 208,541 reviews.

    Published (SOURCES.md): 9,577 users, all active in both domains; 18,639 Art and 19,757 Office
    items; ~198,964 interactions counting one line per user (Art 101,300, Office 97,664). Both
    held-out targets are kept here (see the module docstring), adding 9,577 events.
    """
    root = Path(root)
    items = pl.concat([_read_items(root / name, content_type) for content_type, name in _ITEM_FILES.items()])
    bad = items.filter(pl.col("item_id").is_duplicated())
    if bad.height:
        raise DataError(root / _ITEM_FILES[OFFICE], "item id (idAfter) used by both item files", column="idAfter",
                        value=bad["item_id"][0], expected="disjoint id ranges for Art and Office items")
    amazon_ids = _read_amazon_ids(root / "users_amazon_ids.json")

    sequences = root / "full_sequences"
    per_split = [_read_sequences(sequences / name).with_columns(pl.lit(split).alias("split"))
                 for split, name in _SEQUENCE_FILES.items()]
    tokens = pl.concat(per_split)
    users = tokens.select("user", "split").unique(maintain_order=True)
    dup = users.filter(pl.col("user").is_duplicated())
    if dup.height:
        raise DataError(sequences, "user appears in more than one split file", column="user",
                        value=dup["user"][0], expected=f"each user in one of {list(_SEQUENCE_FILES.values())}")
    unknown = users.filter((pl.col("user") < 0) | (pl.col("user") >= len(amazon_ids)))
    if unknown.height or users.height != len(amazon_ids):
        raise DataError(sequences, f"{users.height} users in the sequence files, {len(amazon_ids)} in "
                        "users_amazon_ids.json", column="user",
                        value=unknown["user"][0] if unknown.height else None,
                        expected=f"user indexes 0..{len(amazon_ids) - 1}, each in the sequence files")

    events = _full_sequences(tokens).with_columns(pl.col("item").cast(pl.String).alias("item_id"))
    events = events.join(items.select("item_id", "content_type"), on="item_id", how="left")
    missing = events.filter(pl.col("content_type").is_null())
    if missing.height:
        row = missing.row(0, named=True)
        raise DataError(sequences / _SEQUENCE_FILES[row["split"]], "item id in neither item file",
                        line=row["line"], column=f"field {row['field']}", value=row["item_id"],
                        expected="an idAfter value of the item files")
    events = events.select(
        pl.col("user").cast(pl.String).alias("user_id"),
        "item_id",
        "content_type",
        pl.lit(None, pl.Int64).alias("ts"),
        "seq",
        pl.lit(REVIEW).alias("event"),
        pl.lit(None, pl.Float64).alias("value"),
        "target_line",
    ).sort(pl.col("user_id").cast(pl.Int64), "seq")
    reviewer = pl.DataFrame({"amazon_id": amazon_ids}).with_row_index("user").cast({"user": pl.Int64})
    user_table = users.join(reviewer, on="user").sort("user").select(
        pl.col("user").cast(pl.String).alias("user_id"), "amazon_id", "split"
    )
    return CanonicalDataset.build("amazon-arts-office", items=items, events=events, users=user_table)


def _read_items(path: Path, content_type: str) -> pl.DataFrame:
    raw = read_table(path, {"item_title": pl.String, "idAfter": pl.Int64, "item_attribute": pl.String},
                     required=("idAfter",))
    department = _DEPARTMENTS[content_type]
    second = "|".join(_SECOND_LEVEL[content_type])
    attribute = pl.col("item_attribute").fill_null("").str.strip_chars()
    return raw.select(
        pl.col("idAfter").cast(pl.String).alias("item_id"),
        pl.lit(content_type).alias("content_type"),
        pl.col("item_title").alias("title"),
        pl.concat_list(
            pl.lit(department),
            attribute.str.extract(f"^{department} ({second})(?: |$)", 1),
            pl.when((attribute != "") & (attribute != department)).then(attribute),
        ).list.drop_nulls().alias("categories"),
    )



def _read_amazon_ids(path: Path) -> list[str]:
    try:
        ids = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON: {e.msg}", line=e.lineno,
                        expected="a JSON list of Amazon reviewer ids") from e
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(path, "not a list of strings", expected="a JSON list of Amazon reviewer ids")
    return ids


def _first_bad(df: pl.DataFrame, bad: pl.Expr, path: Path, problem: str, *, value: str, expected: str,
               column: str | None = None) -> None:
    """Raise DataError for the first row of `df` where `bad` holds, naming its line (and field)."""
    hits = df.filter(bad)
    if hits.height:
        row = hits.row(0, named=True)
        if column is None and "field" in row:
            column = f"field {row['field']}"
        raise DataError(path, problem, line=row["line"], column=column, value=row[value], expected=expected)


def _read_sequences(path: Path) -> pl.DataFrame:
    """The tokens of a C2DSR sequence file: one row per interaction (line, field, user, n, pos, item).

    A line is ``user \\t n \\t item|pos|pos \\t ...`` with n+1 tokens whose positions are 0..n.
    """
    lines = pl.DataFrame({"text": read_text(path).splitlines()}).with_row_index("line", offset=1)
    fields = lines.select(
        pl.col("line").cast(pl.Int64),
        pl.col("text").str.strip_chars_end("\t").str.split("\t").alias("fields"),
    ).with_columns(
        pl.col("fields").list.get(0, null_on_oob=True).alias("user_text"),
        pl.col("fields").list.get(1, null_on_oob=True).alias("n_text"),
    ).with_columns(
        pl.col("user_text").str.strip_chars().cast(pl.Int64, strict=False).alias("user"),
        pl.col("n_text").str.strip_chars().cast(pl.Int64, strict=False).alias("n"),
        (pl.col("fields").list.len() - 2).alias("n_tokens"),
    )
    _first_bad(fields, pl.col("user").is_null(), path, "unparsable user index", column="field 1",
               value="user_text", expected="an integer user index")
    _first_bad(fields, pl.col("n").is_null(), path, "unparsable sequence length", column="field 2",
               value="n_text", expected="an integer n (the last position)")
    _first_bad(fields, pl.col("n_tokens") != pl.col("n") + 1, path, "wrong number of item tokens", column="field 2",
               value="n_tokens", expected="n+1 tokens `item|pos|pos` after `user \\t n`")

    tokens = (
        fields.select("line", "user", "n", pl.col("fields").list.slice(2).alias("token"))
        .explode("token")
        .with_columns((pl.int_range(pl.len()).over("line") + 3).alias("field"),
                      pl.col("token").str.split("|").alias("parts"))
        .with_columns(
            _int_part(0).alias("item"), _int_part(1).alias("pos"), _int_part(2).alias("pos2"),
        )
    )
    unparsable = (pl.col("parts").list.len() != 3) | pl.any_horizontal(pl.col("item", "pos", "pos2").is_null())
    _first_bad(tokens, unparsable, path, "unparsable item token", value="token", expected="`item|pos|pos` with three integers")
    # The C2DSR readers sort a line's tokens by the 2nd field; it must run 0..n exactly once each.
    tokens = tokens.sort("line", "pos").with_columns(pl.int_range(pl.len()).over("line").alias("expected_pos"))
    _first_bad(tokens, pl.col("pos") != pl.col("expected_pos"), path, "positions are not 0..n", value="token",
               expected="each position 0..n exactly once per line")

    # Two lines per user sharing everything but the final item (the two held-out targets).
    per_line = tokens.group_by("line", "user", "n").agg(
        pl.col("item").filter(pl.col("pos") < pl.col("n")).cast(pl.String).str.join(" ").alias("history")
    )
    per_user = per_line.group_by("user").agg(
        pl.len().alias("lines"), pl.col("line").max().alias("line"),
        pl.col("history").n_unique().alias("histories"), pl.col("n").n_unique().alias("lengths"),
    )
    _first_bad(per_user, pl.col("lines") != 2, path, "user does not have exactly two lines", column="field 1",
               value="user", expected="two lines per user (same history, a different final item)")
    _first_bad(per_user, (pl.col("histories") != 1) | (pl.col("lengths") != 1), path,
               "the user's two lines differ before their final item", column="field 1", value="user",
               expected="two lines per user with the same history, differing only in the final item")
    return tokens.select("line", "field", "user", "n", "pos", "item")


def _int_part(i: int) -> pl.Expr:
    """The i-th `|`-separated part of a token as an integer (null when absent or not an integer)."""
    return pl.col("parts").list.get(i, null_on_oob=True).str.strip_chars().cast(pl.Int64, strict=False)


def _full_sequences(tokens: pl.DataFrame) -> pl.DataFrame:
    """The shared history and the first line's target (seq 0..n), then the second line's target (seq n+1)."""
    first_line = pl.col("line") == pl.col("line").min().over("user")
    history_and_first = tokens.filter(first_line).with_columns(
        pl.col("pos").alias("seq"),
        pl.when(pl.col("pos") == pl.col("n")).then(pl.lit(1, pl.Int8)).alias("target_line"),
    )
    second_target = tokens.filter(~first_line & (pl.col("pos") == pl.col("n"))).with_columns(
        (pl.col("n") + 1).alias("seq"),
        pl.lit(2, pl.Int8).alias("target_line"),
    )
    return pl.concat([history_and_first, second_target])
