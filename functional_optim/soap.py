"""SOAP: ``scale_by_soap`` (Adam in the eigenbasis of Shampoo's preconditioner) and the ``soap`` alias.

Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam" (2024),
https://arxiv.org/abs/2409.11321. Reference implementation for the numbers:
``pytorch_optimizer.SOAP`` (tests compare step by step).

Each leaf's gradient is seen as a tensor whose dimensions (after optional merging of small ones)
each carry a Kronecker factor ``L_k = EMA(G_(k) G_(k)^T)`` (Shampoo's statistics) and an orthogonal
basis ``Q_k`` of it; Adam runs on the gradient rotated into that basis. The bases come from one
``eigh`` at a leaf's first gradient and are then refreshed every ``precondition_frequency`` steps by
one power iteration and a QR decomposition, as the reference does.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _validate
from ._kernels.eager import inside_functorch_transform
from ._moments import as_float64, bias_correction, check_betas_range, check_non_negative, lerp, zero_count
from .base import GradientTransformation
from .combine import map_updates, masked, named_chain
from .transforms import _like, _stateless, flip_sign, scale_by_learning_rate
from .tree import EMPTY, check_counters, check_same_structure, check_state_like, check_state_type, flatten
from .tree import is_empty, lazy_paths, unflatten

Number = Union[float, Tensor]

__all__ = ["ScaleBySoapHParams", "ScaleBySoapState", "DecaySteppedParamsHParams", "scale_by_soap", "soap",
           "factor_sizes", "merged_shape"]

_DATA_FORMATS = ("channels_first", "channels_last")


class ScaleBySoapHParams(NamedTuple):
    """``b1``, ``b2``: decays of the first and second moments; ``shampoo_beta``: decay of the
    Kronecker factors (``None``: ``b2``); ``eps``: added to ``sqrt(nu)`` (and to the RMS with
    ``normalize_gradient``); ``precondition_frequency``: steps between two basis refreshes."""

    b1: Number = 0.95
    b2: Number = 0.95
    shampoo_beta: Optional[Number] = None
    eps: Number = 1e-8
    precondition_frequency: Union[int, Tensor] = 10


class ScaleBySoapState(NamedTuple):
    """``count``: updates so far (0-d int32, shared by the leaves: ``pytorch_optimizer``'s
    ``group["step"]``); ``mu``: EMA of the gradients (``exp_avg``, in the parameters' own basis);
    ``nu``: EMA of the squared rotated gradients (``exp_avg_sq``, in the eigenbasis, laid out like
    the parameter); ``started``: per leaf, whether it had a gradient (0-d bool: its bases exist).

    ``gg[k]`` / ``q[k]``: trees with the structure of the params holding each leaf's ``k``-th
    Kronecker factor ``L_k`` and its basis ``Q_k`` (``n_k x n_k``, ``n_k`` the leaf's ``k``-th
    dimension after merging), :data:`~functional_optim.tree.EMPTY` where the leaf has no ``k``-th
    dimension or leaves it unrotated (larger than ``max_precondition_dim``, a vector without
    ``precondition_1d``). ``len(gg)`` is the most dimensions any leaf has.
    """

    count: Tensor
    mu: Any
    nu: Any
    started: Any
    gg: tuple
    q: tuple


# ---------------------------------------------------------------------------- layout of a leaf
def merged_shape(shape: Sequence[int], max_dim: int) -> tuple:
    """Neighbouring dimensions multiplied together while their product stays ``<= max_dim``.

    The reference's ``merge_small_dims`` rule (``(1, 2, 512, 1, 2048, 1, 3, 4)`` with 1024 becomes
    ``(1024, 2048, 12)``; a first dimension above ``max_dim`` leaves a leading 1), except that a
    shape which merges into a single dimension becomes ``(numel,)``: the reference returns ``[1]``
    there, whose reshape fails for any tensor of more than one element.
    """
    out, product = [], 1
    for d in shape:
        product *= d
        if product > max_dim:
            out.append(product // d)
            product = d
    out.append(product)
    return tuple(out)


class _LeafLayout(NamedTuple):
    """How one leaf meets its factors: ``dims`` (the shape the factors act on) and, per dimension,
    whether it is rotated; ``reshape``: the leaf is reshaped to ``dims`` (``merge_dims``), after an
    NHWC -> NCHW permutation when ``nchw``."""

    shape: tuple
    dims: tuple
    rotated: tuple
    reshape: bool
    nchw: bool

    @property
    def has_factors(self) -> bool:
        return any(self.rotated)

    def to_work(self, x: Tensor) -> Tensor:
        if not self.reshape:
            return x
        return (x.permute(0, 3, 1, 2) if self.nchw else x).reshape(self.dims)

    def from_work(self, x: Tensor) -> Tensor:
        if not self.reshape:
            return x
        if self.nchw:
            n, h, w, c = self.shape
            return x.reshape(n, c, h, w).permute(0, 2, 3, 1)
        return x.reshape(self.shape)


def _leaf_layout(shape: Sequence[int], max_dim: int, merge_dims: bool, precondition_1d: bool,
                 channels_last: bool) -> _LeafLayout:
    """The reference's rules: a vector is rotated only with ``precondition_1d`` (and never merged);
    any other leaf rotates each (merged) dimension of size ``<= max_dim``."""
    shape = tuple(shape)
    if len(shape) == 1:
        return _LeafLayout(shape, shape, (precondition_1d and shape[0] <= max_dim,), False, False)
    if not merge_dims:
        return _LeafLayout(shape, shape, tuple(d <= max_dim for d in shape), False, False)
    nchw = channels_last and len(shape) == 4
    source = (shape[0], shape[3], shape[1], shape[2]) if nchw else shape
    dims = merged_shape(source, max_dim)
    return _LeafLayout(shape, dims, tuple(d <= max_dim for d in dims), True, nchw)


def factor_sizes(shape: Sequence[int], *, max_precondition_dim: int = 10000, merge_dims: bool = False,
                 precondition_1d: bool = False, data_format: str = "channels_first") -> list:
    """Per dimension of a leaf of ``shape`` (after merging): the size of its Kronecker factor, or
    ``None`` where that dimension is not rotated. The layout of ``ScaleBySoapState.gg``/``.q``
    (``EMPTY`` at ``None``) and of the reference's ``GG``/``Q`` lists (``[]`` at ``None``)."""
    lay = _leaf_layout(shape, max_precondition_dim, merge_dims, precondition_1d, data_format == "channels_last")
    return [n if rotated else None for n, rotated in zip(lay.dims, lay.rotated)]


# ---------------------------------------------------------------------------- the linear algebra
def _outer(gw: Tensor, layout: _LeafLayout, k: int) -> Tensor:
    """``G_(k) G_(k)^T``: the gradient contracted with itself over every dimension but ``k``."""
    if len(layout.shape) == 1:
        return gw.unsqueeze(1) @ gw.unsqueeze(0)
    others = [i for i in range(gw.dim()) if i != k]
    return torch.tensordot(gw, gw, dims=[others, others])


def _eigenbasis(factor: Tensor) -> Tensor:
    """Eigenvectors of ``factor + 1e-30 I``, by decreasing eigenvalue (the reference's first basis).
    ``eigh`` runs in float64 for dtypes it lacks (bfloat16, float16), as the reference's fallback."""
    if factor.dtype in (torch.float32, torch.float64):
        eye = torch.eye(factor.shape[0], device=factor.device, dtype=factor.dtype)
        _, vectors = torch.linalg.eigh(factor + 1e-30 * eye)
    else:
        eye = torch.eye(factor.shape[0], device=factor.device, dtype=torch.float64)
        _, vectors = torch.linalg.eigh(factor.to(torch.float64) + 1e-30 * eye)
        vectors = vectors.to(factor.dtype)
    return torch.flip(vectors, dims=[1])


def _refreshed(factors: list, bases: list, dims: list, nu_work: Tensor) -> tuple:
    """One power iteration and QR per rotated dimension (the reference's ``get_orthogonal_matrix_qr``).

    For each rotated dimension ``k`` (in ``dims``, increasing) with factor ``L`` and basis ``Q``:
    ``L Q``'s columns are sorted by the estimated eigenvalues ``diag(Q^T L Q)`` (decreasing), the
    second moment's entries follow their columns along ``k``, and ``Q <- qr(L Q)`` (in float32, as
    the reference: ``qr`` lacks half precisions and the orthogonality of ``Q`` matters).

    The bases stay column-major (LAPACK's layout, that of ``eigh`` and ``qr``), as ``init`` lays
    them out and as the compiled branches copy them: ``L Q`` then runs the same BLAS kernel as in
    the reference and eagerly and compiled alike. That matters where ``L`` is degenerate (a
    vector's first steps, a leaf's late start: rank one), whose null-space basis rounding decides.
    """
    new_bases = []
    for k, factor, basis in zip(dims, factors, bases):
        product = factor @ basis
        estimated = (basis * product).sum(dim=0)
        order = torch.argsort(estimated, descending=True)
        nu_work = nu_work.index_select(k, order)
        q, _ = torch.linalg.qr(product.index_select(1, order).to(torch.float32))
        new_bases.append(q.to(product.dtype))
    return new_bases, nu_work


def _project(x: Tensor, layout: _LeafLayout, bases: dict, back: bool = False) -> Tensor:
    """``x`` rotated into the eigenbasis (``x ×_k Q_k^T`` over the rotated dimensions), or back
    (``back``: ``×_k Q_k``); each contraction moves its dimension last, so after all of them the
    dimensions are in their order again (an unrotated one is just moved)."""
    y = layout.to_work(x)
    for k in range(len(layout.dims)):
        basis = bases.get(k)
        if basis is None:
            y = y.permute([*range(1, y.dim()), 0])
        else:
            y = torch.tensordot(y, basis, dims=[[0], [1 if back else 0]])
    return layout.from_work(y)


# ---------------------------------------------------------------------------- data-dependent choices
class _Choices:
    """How an update makes its data-dependent choices (a leaf's first basis, the refresh steps).

    * eagerly: the predicates are read on the host in one transfer per update, and only the
      chosen branch runs (the reference's work);
    * under ``torch.compile``: ``torch.cond``, one graph for every count, only the taken branch
      runs (its outputs take the layout of the tensors they replace, so both branches agree);
    * inside ``torch.func`` transforms (``vmap``, ``grad``): both branches run and ``torch.where``
      picks (a batched predicate may differ per batch member).
    """

    def __init__(self) -> None:
        if torch.compiler.is_compiling():
            self.mode = "cond"
        elif inside_functorch_transform():
            self.mode = "where"
        else:
            self.mode = "host"

    def read(self, predicates: list) -> list:
        """The predicates (0-d bool tensors) as this mode uses them: Python bools on the host."""
        if self.mode != "host" or not predicates:
            return predicates
        device = predicates[0].device
        return [bool(v) for v in torch.stack([p.to(device) for p in predicates]).tolist()]

    @staticmethod
    def both(a: Any, b: Any) -> Any:
        return (a and b) if isinstance(a, bool) else a & b

    @staticmethod
    def pick(pred: Any, if_true: Callable[[], list], if_false: Callable[[], list]) -> list:
        """Cheap (elementwise) alternatives: the chosen one on the host, else both and ``torch.where``."""
        if isinstance(pred, bool):
            return list(if_true() if pred else if_false())
        return [torch.where(pred.to(a.device), a, b) for a, b in zip(if_true(), if_false())]

    def run(self, pred: Any, if_true: Callable, if_false: Callable, operands: list, like: slice) -> list:
        """``if_true(*operands)`` or ``if_false(*operands)``: the expensive alternatives (``eigh``,
        QR). Both return tensors shaped like ``operands[like]``; under ``torch.compile`` they are the
        branches of a ``torch.cond``, their outputs copied into tensors laid out like those operands
        (both branches then agree on strides, and the state keeps its layout from call to call)."""
        if self.mode == "cond" and not isinstance(pred, bool):
            def owned(fn):
                return lambda *ops: tuple(torch.empty_like(layout).copy_(x) for layout, x in zip(ops[like], fn(*ops)))

            return list(torch.cond(pred, owned(if_true), owned(if_false), tuple(operands)))
        return self.pick(pred, lambda: if_true(*operands), lambda: if_false(*operands))


# ---------------------------------------------------------------------------- the block
def scale_by_soap(b1: Number = 0.95, b2: Number = 0.95, shampoo_beta: Optional[Number] = None, eps: Number = 1e-8,
                  precondition_frequency: Union[int, Tensor] = 10, *, max_precondition_dim: int = 10000,
                  merge_dims: bool = False, precondition_1d: bool = False, data_format: str = "channels_first",
                  normalize_gradient: bool = False, correct_bias: bool = True) -> GradientTransformation:
    r"""Rescale updates by SOAP: Adam in the eigenbasis of Shampoo's Kronecker factors.

    With the count :math:`t` of earlier updates, for each leaf's gradient :math:`G` (dimensions
    merged with ``merge_dims``, NHWC read as NCHW with ``data_format="channels_last"``) and each
    rotated dimension :math:`k` (size ``<= max_precondition_dim``; vectors only with
    ``precondition_1d``), :math:`\tilde x = x \times_k Q_k^\top` rotates into the basis:

    .. math::
        m_t = \beta_1 m + (1-\beta_1) G, \quad
        \nu_t = \beta_2 \nu + (1-\beta_2) \tilde G^2, \quad
        u_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
              \Big(\frac{\tilde m_t}{\sqrt{\nu_t} + \epsilon}\Big) \times_k Q_k, \\
        L_k \leftarrow \beta_s L_k + (1-\beta_s) G_{(k)} G_{(k)}^\top, \quad
        Q_k \leftarrow \mathrm{qr}(L_k Q_k) \ \text{every } f \text{ steps} \ (t \bmod f = 0)

    (``normalize_gradient``: :math:`u` divided by :math:`\mathrm{RMS}(u) + \epsilon` before the bias
    correction; ``correct_bias=False`` drops it). The refresh sorts :math:`L_k Q_k`'s columns by
    :math:`\mathrm{diag}(Q_k^\top L_k Q_k)` and permutes :math:`\nu` with them. Vyas et al. (2024),
    https://arxiv.org/abs/2409.11321; the numbers of ``pytorch_optimizer.SOAP``:

    * the first update only starts the preconditioner: :math:`L_k` takes the gradient, :math:`Q_k`
      are its eigenvectors (``eigh``, decreasing eigenvalues) and the update is zero;
    * a leaf whose first gradient comes later (after ``None`` gradients) starts the same way and
      is then stepped in the same update, whose factor update adds that gradient a second time
      (and refreshes twice if the count is a refresh step), as the reference does;
    * the bias corrections use :math:`t` (the count before this update), so the first step taken
      (:math:`t = 1`) has :math:`\sqrt{1-\beta_2}/(1-\beta_1)`.

    Static: ``max_precondition_dim``, ``merge_dims``, ``precondition_1d``, ``data_format``,
    ``normalize_gradient``, ``correct_bias`` (they set the state's shapes or the formula);
    ``b1``, ``b2``, ``shampoo_beta``, ``eps`` and ``precondition_frequency`` are hparams (numbers
    or 0-d tensors). The count is shared by all leaves, as the reference's group step.

    **Cost of the schedule.** The first basis and the refreshes depend on the count and on each
    leaf's ``started`` flag, which live in tensors. Eagerly they are read on the host in one
    transfer per update (one device sync) and only what the reference computes is computed.
    Under ``torch.compile`` they are ``torch.cond`` branches: one graph for every count, and only
    the taken branch runs (its outputs are copied once into the layout of the state they replace;
    on CUDA the predicate is read by the host inside the graph). Inside ``torch.func.vmap``/``grad``
    both branches run and ``torch.where`` selects: every update then pays one ``eigh`` per factor
    and up to two power iterations + QR per factor, where the reference pays one QR per factor
    every ``precondition_frequency`` steps.

    **Autograd.** The factors and bases are computed from detached gradients (the reference runs
    under ``no_grad``; the derivative of ``eigh`` does not exist where eigenvalues repeat, as
    they do in a factor's first steps): gradients through ``update`` treat the bases as constants
    and flow through the moments, the rotations and the permutation of :math:`\nu`.

    Differences from the reference: ``shampoo_beta`` and ``precondition_frequency`` are read at
    every update (the reference stores each parameter's at its first gradient); a shape that
    ``merge_dims`` merges into a single dimension is rotated as ``(numel,)`` and a vector is
    never merged (the reference fails to reshape both); no retry of ``eigh`` in float64 after a
    failure; complex and sparse gradients are refused (``RuntimeError``).

    Example::

        tx = fo.chain(fo.scale_by_soap(precondition_frequency=10), fo.scale_by_learning_rate(3e-3))
    """
    defaults = _validate.scalar_hparams(ScaleBySoapHParams(b1, b2, shampoo_beta, eps, precondition_frequency),
                                        "scale_by_soap")
    check_betas_range((b1, b2), ("beta1", "beta2"))
    check_non_negative(shampoo_beta, "shampoo_beta")
    check_non_negative(eps, "eps")
    if not precondition_frequency > 0:
        raise ValueError("precondition_frequency must be positive")
    if not max_precondition_dim > 0:
        raise ValueError("max_precondition_dim must be positive")
    if data_format not in _DATA_FORMATS:
        raise ValueError(f"data_format must be one of {_DATA_FORMATS}, got {data_format!r}")
    channels_last = data_format == "channels_last"

    def layout_of(shape) -> _LeafLayout:
        return _leaf_layout(shape, max_precondition_dim, merge_dims, precondition_1d, channels_last)

    def check_leaves(leaves: list, what: str, paths) -> None:
        for i, x in enumerate(leaves):
            if isinstance(x, Tensor) and (x.is_complex() or x.is_sparse):
                kind = "complex parameter" if x.is_complex() else "sparse gradient"
                raise RuntimeError(f"SOAP does not support {kind}. ({what} at {paths()[i]})")

    def init(params):
        leaves, spec = flatten(params)
        check_leaves(leaves, "params", lazy_paths(params))
        layouts = [None if p is None else layout_of(p.shape) for p in leaves]
        n_dims = max([0] + [len(lay.dims) for lay in layouts if lay is not None])

        def factors(k, strides):
            out = []
            for p, lay in zip(leaves, layouts):
                if lay is None or k >= len(lay.dims) or not lay.rotated[k]:
                    out.append(EMPTY)
                else:
                    n = lay.dims[k]
                    out.append(torch.empty_strided((n, n), strides(n), dtype=p.dtype, device=p.device).zero_())
            return unflatten(spec, out)

        def row_major(n):
            return (n, 1)

        def column_major(n):  # the bases: LAPACK's layout, that of eigh's and qr's results (see _refreshed)
            return (1, n)

        started = map_updates(lambda p: torch.zeros((), dtype=torch.bool, device=p.device), params)
        return ScaleBySoapState(zero_count(params), map_updates(torch.zeros_like, params),
                                map_updates(torch.zeros_like, params), started,
                                tuple(factors(k, row_major) for k in range(n_dims)),
                                tuple(factors(k, column_major) for k in range(n_dims)))

    def check_factors(updates, state) -> None:
        if not isinstance(state.gg, tuple) or not isinstance(state.q, tuple) or len(state.gg) != len(state.q):
            raise ValueError("scale_by_soap: state.gg and state.q must be tuples of the same length")
        leaves = flatten(updates)[0]
        paths = lazy_paths(updates)
        needed = max([0] + [len(layout_of(g.shape).dims) for g in leaves if isinstance(g, Tensor)])
        if len(state.gg) < needed:
            raise ValueError(f"scale_by_soap: state.gg has {len(state.gg)} dimensions, the updates need {needed}")
        for name, trees in (("gg", state.gg), ("q", state.q)):
            for k, tree in enumerate(trees):
                what = f"scale_by_soap: state.{name}[{k}]"
                check_same_structure(updates, tree, "the updates", what)
                for i, (g, x) in enumerate(zip(leaves, flatten(tree)[0])):
                    if not isinstance(g, Tensor):
                        continue
                    lay = layout_of(g.shape)
                    rotated = k < len(lay.dims) and lay.rotated[k]
                    if not rotated:
                        if not is_empty(x):
                            raise ValueError(f"{what} at {paths()[i]} must be EMPTY (that dimension is not rotated)")
                        continue
                    n = lay.dims[k]
                    if not isinstance(x, Tensor) or x.shape != (n, n) or x.dtype != g.dtype or x.device != g.device:
                        got = (f"{tuple(x.shape)} {x.dtype} on {x.device}" if isinstance(x, Tensor)
                               else type(x).__name__)
                        raise ValueError(f"{what} at {paths()[i]} is {got}, expected ({n}, {n}) {g.dtype} "
                                         f"on {g.device}")

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_soap", defaults, hparams)
        check_state_type(state, ScaleBySoapState, "scale_by_soap")
        check_counters("scale_by_soap", state, ("count",))
        check_state_like(updates, state.mu, "scale_by_soap: state.mu")
        check_state_like(updates, state.nu, "scale_by_soap: state.nu")
        check_state_like(updates, state.started, "scale_by_soap: state.started", scalar=True)
        check_factors(updates, state)
        g_leaves, spec = flatten(updates)
        check_leaves(g_leaves, "updates", lazy_paths(updates))
        mu_l, nu_l, started_l = flatten(state.mu)[0], flatten(state.nu)[0], flatten(state.started)[0]
        gg_l = [flatten(t)[0] for t in state.gg]
        q_l = [flatten(t)[0] for t in state.q]
        n_dims = len(gg_l)

        count = state.count
        t = as_float64(torch.clamp_min(count, 1))  # the first update (count 0) takes no step: no 0/0 there
        shampoo = hp.b2 if hp.shampoo_beta is None else hp.shampoo_beta
        scale = torch.sqrt(bias_correction(hp.b2, t)) / bias_correction(hp.b1, t) if correct_bias else None

        choices = _Choices()
        active = [i for i, g in enumerate(g_leaves) if g is not None]
        first, refresh, *not_started = choices.read(
            [count == 0, (count > 0) & (count % hp.precondition_frequency == 0), *[~started_l[i] for i in active]])
        not_started = dict(zip(active, not_started))

        out = list(g_leaves)
        new_mu, new_nu, new_started = list(mu_l), list(nu_l), list(started_l)
        new_gg = [list(x) for x in gg_l]
        new_q = [list(x) for x in q_l]
        for i in active:
            g = g_leaves[i]
            lay = layout_of(g.shape)
            ks = [k for k in range(len(lay.dims)) if lay.rotated[k]]
            u, mu, nu, gg, q = _leaf_update(g, mu_l[i], nu_l[i], {k: gg_l[k][i] for k in ks},
                                            {k: q_l[k][i] for k in ks}, lay, hp, shampoo, scale, first, refresh,
                                            not_started[i], normalize_gradient, choices)
            out[i], new_mu[i], new_nu[i] = u, mu, nu
            new_started[i] = torch.ones_like(started_l[i])
            for k in ks:
                new_gg[k][i], new_q[k][i] = gg[k], q[k]
        return unflatten(spec, out), ScaleBySoapState(
            count + 1, unflatten(spec, new_mu), unflatten(spec, new_nu), unflatten(spec, new_started),
            tuple(unflatten(spec, new_gg[k]) for k in range(n_dims)),
            tuple(unflatten(spec, new_q[k]) for k in range(n_dims)))

    return GradientTransformation(init, update, defaults)


def _leaf_update(g: Tensor, mu: Tensor, nu: Tensor, gg: dict, q: dict, lay: _LeafLayout, hp: ScaleBySoapHParams,
                 shampoo: Any, scale: Optional[Tensor], first: Any, refresh: Any, not_started: Any,
                 normalize_gradient: bool, choices: _Choices) -> tuple:
    """One leaf's SOAP update: ``(u, mu, nu, factors, bases)``, the factors and bases as dicts
    ``{rotated dimension: tensor}``. The factors see the detached gradient (the bases are constants
    for autograd, see :func:`scale_by_soap`)."""
    ks = sorted(gg)
    weight = 1.0 - shampoo
    gw = lay.to_work(g.detach())
    outers = {k: _outer(gw, lay, k) for k in ks}

    def with_gradient(factors: dict) -> dict:
        return {k: lerp(factors[k], outers[k].to(factors[k].dtype), weight) for k in ks}

    def flat(factors: dict, bases: dict, nu_: Tensor) -> list:
        return [factors[k] for k in ks] + [bases[k] for k in ks] + [nu_]

    def split(ops: Sequence[Tensor]) -> tuple:
        n = len(ks)
        return dict(zip(ks, ops[:n])), dict(zip(ks, ops[n:2 * n])), ops[-1]

    def first_bases(*ops: Tensor) -> list:
        factors, _, nu_ = split(ops)
        return [_eigenbasis(factors[k]) for k in ks] + [nu_]

    def refreshed(*ops: Tensor) -> list:
        factors, bases, nu_ = split(ops)
        new_bases, nu_work = _refreshed([factors[k] for k in ks], [bases[k] for k in ks], ks, lay.to_work(nu_))
        return new_bases + [lay.from_work(nu_work)]

    kept_part = slice(len(ks), None)  # the bases and nu: what every branch returns

    def kept(*ops: Tensor) -> list:
        return list(ops[kept_part])

    def bases_and_nu(values: list) -> tuple:
        return dict(zip(ks, values[:-1])), values[-1]

    # a leaf's first gradient: the reference's state (moments like the gradient, init_pre_conditioner,
    # update_pre_conditioner); zeros like ``g``, so that their memory layout is the gradient's too
    mu, nu = choices.pick(not_started, lambda: [torch.zeros_like(g), torch.zeros_like(g)], lambda: [mu, nu])
    if ks:
        gg = dict(zip(ks, choices.pick(not_started, lambda: list(with_gradient(gg).values()),
                                       lambda: [gg[k] for k in ks])))
        q, nu = bases_and_nu(choices.run(not_started, first_bases, kept, flat(gg, q, nu), kept_part))
        q, nu = bases_and_nu(choices.run(choices.both(not_started, refresh), refreshed, kept, flat(gg, q, nu),
                                             kept_part))
    if first is True:
        return torch.zeros_like(g), mu, nu, gg, q

    new_mu = lerp(mu, g, 1.0 - hp.b1)
    new_nu = lerp(nu, _project(g, lay, q).square(), 1.0 - hp.b2)
    root_of = new_nu
    if not isinstance(first, bool):  # a traced first step is computed, then discarded: keep its sqrt off 0
        root_of = torch.where(first.to(new_nu.device), torch.ones_like(new_nu), new_nu)  # (no 0 * inf in autograd)
    denom = torch.sqrt(root_of) + _like(hp.eps, new_nu)
    u = _project(_project(new_mu, lay, q) / denom, lay, q, back=True)
    if normalize_gradient:
        u = u / (torch.sqrt(torch.mean(u.square())) + _like(hp.eps, u))
    if scale is not None:
        u = u * _like(scale, u)
    new_gg, new_q = gg, q
    if ks:
        new_gg = with_gradient(gg)
        new_q, new_nu = bases_and_nu(choices.run(refresh, refreshed, kept, flat(new_gg, q, new_nu), kept_part))
    if first is False:
        return u, new_mu, new_nu, new_gg, new_q
    # traced: at the first update (count 0) only the start above counts
    u, new_mu, new_nu = choices.pick(first, lambda: [torch.zeros_like(u), mu, nu], lambda: [u, new_mu, new_nu])
    new_gg, new_q, _ = split(choices.pick(first, lambda: flat(gg, q, nu), lambda: flat(new_gg, new_q, new_nu)))
    return u, new_mu, new_nu, new_gg, new_q


# ---------------------------------------------------------------------------- the alias
class DecaySteppedParamsHParams(NamedTuple):
    lr: Number = 3e-3
    weight_decay: Number = 1e-2


def _decay_stepped_params(lr: Number, weight_decay: Number) -> GradientTransformation:
    r"""The reference's decoupled decay, applied after the step: :math:`p \leftarrow (p + u)(1 - \eta\lambda)`.

    Placed last (``u`` is the final step): the output is :math:`u - \eta\lambda (p + u)`. ``lr`` is a
    field of its own record, set together with ``scale_by_learning_rate``'s by one name."""

    def fn(updates, params, hp):
        if params is None:
            raise ValueError("soap: the weight decay needs params")

        def leaf(u, p):
            return u - _like(hp.lr * hp.weight_decay, u) * (p + u)

        return map_updates(leaf, updates, params)

    return _stateless("decay_stepped_params", DecaySteppedParamsHParams(lr, weight_decay), fn)


def soap(lr: Number = 3e-3, b1: Number = 0.95, b2: Number = 0.95, shampoo_beta: Optional[Number] = None,
         weight_decay: Number = 1e-2, precondition_frequency: Union[int, Tensor] = 10, eps: Number = 1e-8, *,
         max_precondition_dim: int = 10000, merge_dims: bool = False, precondition_1d: bool = False,
         correct_bias: bool = True, normalize_gradient: bool = False, data_format: str = "channels_first",
         maximize: bool = False, mask: Any = None) -> GradientTransformation:
    r"""SOAP with ``pytorch_optimizer.SOAP``'s defaults and weight decay, as a composition.

    ``named_chain(("soap", scale_by_soap(...)), ("lr", scale_by_learning_rate(lr)),
    ("decay", ...))`` (``("maximize", flip_sign())`` first with ``maximize``), whose decay is the
    reference's: decoupled and applied to the stepped parameters,
    :math:`p \leftarrow (p - \eta\, u_t)(1 - \eta\lambda)` (``mask`` limits it to some leaves).
    The whole first update is zero, decay included: the reference only starts its preconditioner
    there (one ``torch.where`` per leaf on the shared count).

    Equal to ``pytorch_optimizer.SOAP`` step by step up to rounding (the learning rate multiplies
    the update instead of entering ``add(alpha=)``); see :func:`scale_by_soap` for the math, the
    cost of its schedule and where it differs.

    Example::

        opt = fo.soap(lr=3e-3, precondition_frequency=10)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
    """
    _validate.check_lr(lr)
    check_non_negative(weight_decay, "weight_decay")
    block = scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency, max_precondition_dim=max_precondition_dim,
                          merge_dims=merge_dims, precondition_1d=precondition_1d, data_format=data_format,
                          normalize_gradient=normalize_gradient, correct_bias=correct_bias)
    decay = _decay_stepped_params(lr, weight_decay)
    parts: list = [("maximize", flip_sign())] if maximize else []
    parts += [("soap", block), ("lr", scale_by_learning_rate(lr)),
              ("decay", decay if mask is None else masked(decay, mask))]
    inner = named_chain(*parts)

    def update(updates, state, params=None, hparams=None):
        updates, new_state = inner.update(updates, state, params, hparams)
        first = new_state["soap"].count == 1
        return map_updates(lambda u: torch.where(first.to(u.device), torch.zeros_like(u), u), updates), new_state

    return GradientTransformation(inner.init, update, inner.hparams)
