"""CytAct and IFN-gamma targets from expression, checked against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from immunode.cli import main as cli_main
from models.errors import ModelError
from models.expression_scores import cytact_scores, read_expression

GENES = ["GZMA", "PRF1", "IDO1", "CXCL9", "CXCL10", "IFNG", "HLA-DRA", "STAT1", "ACTB"]
# Three samples; GZMA 1/3/7 and PRF1 0/1/3 give log2(x + 1) of 1/2/3 and 0/1/2: z-scores -1/0/1 for both.
VALUES = {
    "GZMA": [1, 3, 7],
    "PRF1": [0, 1, 3],
    "IDO1": [1, 3, 7],
    "CXCL9": [1, 3, 7],
    "CXCL10": [1, 3, 7],
    "IFNG": [1, 3, 7],
    "HLA-DRA": [1, 3, 7],
    "STAT1": [7, 3, 1],
    "ACTB": [100, 200, 300],
}


def _write(path: Path, samples_by_genes: bool = False, delimiter: str = "\t") -> Path:
    if samples_by_genes:
        lines = [delimiter.join(["sample"] + GENES)] + [
            delimiter.join([f"S{i}"] + [str(VALUES[g][i]) for g in GENES]) for i in range(3)
        ]
    else:
        lines = [delimiter.join(["gene", "S0", "S1", "S2"])] + [
            delimiter.join([g] + [str(v) for v in VALUES[g]]) for g in GENES
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("samples_by_genes", "delimiter"), [(False, "\t"), (True, ","), (False, ",")])
def test_scores_match_hand_computation(tmp_path: Path, samples_by_genes: bool, delimiter: str) -> None:
    table = read_expression(_write(tmp_path / "x.txt", samples_by_genes, delimiter))
    assert table.orientation == ("samples x genes" if samples_by_genes else "genes x samples")
    scores = cytact_scores(table)
    assert [round(scores[s][0], 9) for s in ("S0", "S1", "S2")] == [-1.0, 0.0, 1.0]
    # IFN-gamma: five genes at -1/0/1 and STAT1 at 1/0/-1: mean (5 * -1 + 1) / 6 = -2/3 for S0.
    assert scores["S0"][1] == pytest.approx(-2 / 3) and scores["S1"][1] == pytest.approx(0.0)


def test_missing_score_gene_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text("gene\tS0\tS1\nGZMA\t1\t2\nACTB\t3\t4\n")
    with pytest.raises(ModelError, match="PRF1"):
        cytact_scores(read_expression(path))


def test_cli_writes_csv(tmp_path: Path, capsys) -> None:
    assert cli_main(["cytact-from-expression", str(_write(tmp_path / "x.tsv"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sample,cytact,ifng6"
    sample, cytact, _ = lines[3].split(",")
    assert sample == "S2" and math.isclose(float(cytact), 1.0)
