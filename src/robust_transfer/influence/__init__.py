"""Last-layer influence functions (Koh & Liang 2017) for fine-tuned transfer models.

``I(z, z_test) = -g_test^T (H + lambda I)^-1 g_z`` for the softmax cross-entropy of the
model's linear head on fixed penultimate features, exact: the closed-form Hessian (or a
Woodbury form of it) in float64, or in float32 refined to float64 scores; for heads no
exact form fits, approximate: K-FAC or EK-FAC (``form="kfac"`` / ``"ekfac"``), which
``form="auto"`` takes only then and says so (``result.info["plan"]``). Scores are held
(``result.scores``) or streamed: only top-k, class-match ranks and self-influence kept,
chunk by chunk (``scores="stream"``; ``result.rank(k, max_rank)`` serves both).

Typical use::

    result = influence_for_model(model, train, test)          # InfluenceResult
    curve = class_match_curve(result.scores, result.test_labels, result.train_labels)
    big = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(memory_limit=8 * 2**30))
    big.info["plan"]            # {"form": "kfac", "exact": False, "reason": ..., ...}
    ranking = big.rank(10, 100)  # Ranking: helpful/harmful [m, 10], test_ranks [m, 100], ...

Modules: :mod:`.hessian` (gradients, Hessian, HVPs, parameter order), :mod:`.solvers`
(cholesky / eigh / pinv / cg, mixed precision), :mod:`.forms` (direct, kernel and block
forms of the damped inverse, chosen by cost), :mod:`.kfac` (K-FAC and EK-FAC),
:mod:`.planning` (which form, under memory and time budgets), :mod:`.streaming` (score
sinks: full matrices or rankings), :mod:`.core` (the entry points), :mod:`.analysis` (top-k,
class-match curves), :mod:`.loo` (leave-one-out validation), :mod:`.plots` (Figs. 5 and
6), :mod:`.outputs` (arrays, figures and summary in a folder).
"""

from robust_transfer.influence.analysis import (
    ClassMatchCurve,
    TopK,
    class_match_curve,
    rank_training,
    top_k,
    wilson_interval,
)
from robust_transfer.influence.core import (
    ConfigField,
    InfluenceConfig,
    InfluenceResult,
    compute_influence,
    config_fields,
    extract_features,
    influence_for_model,
    plan_for,
)
from robust_transfer.influence.forms import FORMS, choose_form, flop_estimates
from robust_transfer.influence.hessian import (
    hessian_vector_product,
    last_layer_hessian,
    per_example_grads,
    sum_zero_basis,
    torch_order_permutation,
)
from robust_transfer.influence.loo import LeaveOneOutResult, fit_head, leave_one_out_check
from robust_transfer.influence.outputs import explain_influence, write_influence
from robust_transfer.influence.planning import FormPlan
from robust_transfer.influence.solvers import (
    PRECISIONS,
    SOLVERS,
    ConvergenceError,
    InfluenceMemoryError,
    SingularHessianError,
    estimate_memory,
)
from robust_transfer.influence.streaming import SCORE_MODES, Ranking

__all__ = [
    "FORMS", "PRECISIONS", "SCORE_MODES", "SOLVERS", "ClassMatchCurve", "ConfigField",
    "FormPlan", "Ranking", "choose_form", "plan_for",
    "config_fields", "flop_estimates", "ConvergenceError", "InfluenceConfig", "InfluenceMemoryError",
    "InfluenceResult", "LeaveOneOutResult", "SingularHessianError", "TopK", "class_match_curve",
    "compute_influence", "estimate_memory", "explain_influence", "extract_features",
    "fit_head", "hessian_vector_product", "influence_for_model", "last_layer_hessian",
    "leave_one_out_check", "per_example_grads", "rank_training", "sum_zero_basis", "top_k",
    "torch_order_permutation", "wilson_interval", "write_influence",
]
