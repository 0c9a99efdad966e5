"""Ablation tables: seeds aggregated with t-intervals, incomplete cells marked, exact output."""

from __future__ import annotations

import numpy as np
import pytest
from qsweep.orchestrator.report.tables import ReportedTrial, build_table, to_csv, to_latex, to_markdown
from scipy import stats

VALUES = {("NF4+DQ", "7B", "alpaca"): [0.390, 0.402, 0.385], ("NF4+DQ", "7B", "flan"): [0.445, 0.450, 0.440],
          ("FP4", "7B", "alpaca"): [0.372, 0.380], ("FP4", "7B", "flan"): [0.440, 0.436, 0.444]}


@pytest.fixture
def table():
    records = [ReportedTrial({"data_type": row, "model": model, "data.name": data}, seed, "finished",
                           {"eval/mmlu/acc": value})
               for (row, model, data), values in VALUES.items() for seed, value in enumerate(values)]
    records.append(ReportedTrial({"data_type": "FP4", "model": "7B", "data.name": "alpaca"}, 2, "failed"))
    return build_table(records, rows="data_type", columns=["model", "data.name"], metric="eval/mmlu/acc",
                       seeds=[0, 1, 2], title="Table 4", scale=100)


def test_cells_are_t_intervals_over_seeds_and_the_mean_is_per_seed(table) -> None:
    values = VALUES[("NF4+DQ", "7B", "alpaca")]
    cell = table.cells[("NF4+DQ", "7B / alpaca")].estimate
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert (cell.mean, cell.low, cell.high, cell.n) == pytest.approx((np.mean(values), low, high, 3))
    per_seed = np.mean([VALUES[("NF4+DQ", "7B", "alpaca")], VALUES[("NF4+DQ", "7B", "flan")]], axis=0)
    assert table.means["NF4+DQ"].mean == pytest.approx(per_seed.mean())
    assert table.means["NF4+DQ"].half_width == pytest.approx(stats.t.ppf(0.975, 2) * stats.sem(per_seed))
    assert "FP4" not in table.means  # a seed is missing: no silent average
    failed = table.cells[("FP4", "7B / alpaca")]
    assert (failed.estimate.n, failed.expected, failed.failed, failed.complete) == (2, 3, 1, False)


def test_markdown_latex_and_csv_are_exact(table) -> None:
    assert to_markdown(table) == """\
**Table 4** (eval/mmlu/acc; mean ± half the 95% t-interval over seeds, n = 2-3 seeds; Mean: over columns \
per seed, then a t-interval over seeds)

| data_type | 7B / alpaca | 7B / flan | Mean |
|---|---|---|---|
| NF4+DQ | 39.23 ± 2.17 | 44.50 ± 1.24 | 41.87 ± 1.70 |
| FP4 | 37.60 ± 5.08† | 44.00 ± 0.99 | — |

† FP4 / 7B / alpaca: n=2 of 3 seeds, 1 failed
"""
    assert to_latex(table) == r"""\begin{table}[t]
\centering
\begin{tabular}{lrrr}
\toprule
data\_type & 7B / alpaca & 7B / flan & Mean \\
\midrule
NF4+DQ & 39.23 $\pm$ 2.17 & 44.50 $\pm$ 1.24 & 41.87 $\pm$ 1.70 \\
FP4 & 37.60 $\pm$ 5.08$^\dagger$ & 44.00 $\pm$ 0.99 & -- \\
\bottomrule
\end{tabular}
\caption{CAPTION}
\end{table}
""".replace("CAPTION", r"Table 4: eval/mmlu/acc; mean $\pm$ half the 95\% t-interval over seeds, "
            "n = 2-3 seeds; Mean: over columns per seed, then a t-interval over seeds.")
    assert to_csv(table) == """\
data_type,column,metric,mean,ci_low,ci_high,n,expected,failed,items,method
NF4+DQ,7B / alpaca,eval/mmlu/acc,0.392333,0.37063,0.414037,3,3,0,0,t-interval over seeds
NF4+DQ,7B / flan,eval/mmlu/acc,0.445,0.432579,0.457421,3,3,0,0,t-interval over seeds
FP4,7B / alpaca,eval/mmlu/acc,0.376,0.325175,0.426825,2,3,1,0,t-interval over seeds
FP4,7B / flan,eval/mmlu/acc,0.44,0.430063,0.449937,3,3,0,0,t-interval over seeds
"""


def test_a_cell_with_no_finished_seed_says_failed() -> None:
    records = [ReportedTrial({"q": "NF4"}, 0, "finished", {"m": 1.0}),
               ReportedTrial({"q": "FP4"}, 0, "failed")]
    table = build_table(records, rows="q", columns=[], metric="m", seeds=[0])
    assert table.value("FP4", "all") == "failed" and table.value("NF4", "all") == "1.00"
