"""A retrieval table in the shape of HIER's Table 1, with the paper's numbers beside ours.

Rows are methods on backbones ("HIER R512": Proxy Anchor + HIER on a 512-d ResNet-50),
columns Recall@k per dataset with Table 1's k (CUB and Cars 1/2/4, SOP 1/10/100, In-shop
1/10/20; other datasets their three smallest evaluated k), in percent. The published values
live in `hierpipe/reference/hier_table1.csv`, which names its source.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

PAPER_KS = {"cub200": (1, 2, 4), "cars196": (1, 2, 4), "sop": (1, 10, 100), "inshop": (1, 10, 20)}
DATASET_TITLES = {"cub200": "CUB", "cars196": "Cars", "sop": "SOP", "inshop": "In-shop"}
PAPER_SOURCE = "HIER (Kim, Jeong, Kwak, CVPR 2023), Table 1"

# Table 1's method names for hierpipe's losses; a regulariser is added to the name, except
# that the paper's "HIER" is Proxy Anchor + HIER.
METHODS = {
    "proxy_anchor": "PA",
    "multi_similarity": "MS",
    "hyp_pairwise": "Hyp",
    "normface": "NSoftmax",
}
# Table 1's architecture codes, by timm name prefix (longest prefix first).
ARCHITECTURES = (
    ("vit_small_patch16_224.dino", "DN"),
    ("vit_small", "V"),
    ("deit_small", "De"),
    ("resnet50", "R"),
    ("bninception", "B"),
)


def paper_results() -> pd.DataFrame:
    """The published Table 1: method, arch, dataset, k, recall (%), reference."""
    with resources.files("hierpipe.reference").joinpath("hier_table1.csv").open() as handle:
        return pd.read_csv(handle, comment="#")


def method_name(loss: str | None, regularizer: str | None) -> str:
    """Table 1's name of a loss and regulariser (missing values: None or NaN from a table)."""
    if pd.isna(loss):
        return "untrained"
    if loss == "proxy_anchor" and regularizer == "hier":
        return "HIER"
    name = METHODS.get(loss, loss)
    return name if pd.isna(regularizer) else f"{name}+{regularizer.upper()}"


def architecture_family(backbone: str) -> str:
    """Table 1's letter code of a timm backbone name (the name itself when it has none)."""
    return next((c for prefix, c in ARCHITECTURES if backbone.startswith(prefix)), backbone)


def architecture_code(backbone: str, embedding_dim: int) -> str:
    return f"{architecture_family(backbone)}{embedding_dim}"


def table_ks(dataset: str, evaluated: list[int]) -> tuple[int, ...]:
    return PAPER_KS.get(dataset, tuple(sorted(evaluated)[:3]))


def retrieval_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Long format: method, arch, dataset, k, source (hierpipe | paper), recall in %, sd,
    n_seeds and the hierpipe rows' models. Paper rows only for methods hierpipe ran."""
    rows = []
    for _, row in summary.iterrows():
        evaluated = [
            int(c.removeprefix("retrieval/recall@").removesuffix("/mean"))
            for c in summary.columns
            if c.startswith("retrieval/recall@") and c.endswith("/mean") and pd.notna(row[c])
        ]
        for k in table_ks(row["dataset"], evaluated):
            column = f"retrieval/recall@{k}"
            mean = row.get(f"{column}/mean", float("nan"))
            rows.append(
                {
                    "method": method_name(row["loss"], row["regularizer"]),
                    "arch": architecture_code(row["backbone"], int(row["embedding_dim"])),
                    "dataset": row["dataset"],
                    "k": k,
                    "source": "hierpipe",
                    "recall": 100.0 * mean,
                    "sd": 100.0 * row.get(f"{column}/sd", float("nan")),
                    "n_seeds": row["n_seeds"],
                    "models": f"{row['model']} ({row['option']})",
                }
            )
    columns = ["method", "arch", "dataset", "k", "source", "recall", "sd", "n_seeds", "models"]
    if not rows:  # no run has a defined Recall@k (e.g. every class seen once)
        return pd.DataFrame(columns=columns)
    ours = pd.DataFrame(rows)
    # two runs of one method and architecture on a dataset (options, variants): name them
    clash = ours.duplicated(["method", "arch", "dataset", "k"], keep=False)
    ours.loc[clash, "method"] = ours.loc[clash, "models"]
    paper = paper_results().merge(ours[["method", "arch"]].drop_duplicates())
    paper = paper.merge(ours[["dataset", "k"]].drop_duplicates())
    paper = paper.assign(source="paper", sd=float("nan"), n_seeds=pd.NA, models=PAPER_SOURCE)
    return pd.concat([ours, paper[columns]], ignore_index=True)[columns]


def retrieval_markdown(table: pd.DataFrame) -> str:
    """One line per method and source, Recall@k (%) grouped by dataset as in Table 1."""
    columns = table[["dataset", "k"]].drop_duplicates().itertuples(index=False, name=None)
    columns = list(columns)
    header = ["method", "arch", "source"] + [
        f"{DATASET_TITLES.get(dataset, dataset)} R@{k}" for dataset, k in columns
    ]
    lines = [
        "# Retrieval (Table 1 of HIER)",
        "",
        "Recall@k in %, mean ± sd over seeds for hierpipe's runs; `paper` lines: "
        f"{PAPER_SOURCE} (hierpipe/reference/hier_table1.csv), shown for the methods and "
        "architectures run here. HIER = Proxy Anchor + HIER. - = not reported or not run.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (method, arch, source), group in table.groupby(["method", "arch", "source"], sort=True):
        cells = group.set_index(["dataset", "k"])
        values = []
        for key in columns:
            if key not in cells.index or pd.isna(cells.loc[key, "recall"]):
                values.append("-")
                continue
            recall, sd = cells.loc[key, "recall"], cells.loc[key, "sd"]
            values.append(f"{recall:.1f}" + ("" if pd.isna(sd) else f" ± {sd:.1f}"))
        lines.append("| " + " | ".join([method, arch, source, *values]) + " |")
    return "\n".join(lines) + "\n"
