"""The clipper contract shared by every strategy.

Lifecycle of a clipper:

1. Construct it with its hyperparameters (stored verbatim; ``config`` echoes them back).
2. Optionally ``warm_start(norms)`` with gradient norms observed elsewhere (the probe), so an
   adaptive clipper starts from a measured state instead of a cold one.
3. Each step, ``clipper(parameters)`` (or ``attach(optimizer)`` once) clips gradients in place
   and returns a :class:`ClipResult` of tensors: no ``.item()``, no host sync.
4. ``state_dict()`` / ``load_state_dict()`` carry the adaptive state across a resume.

Non-finite gradients follow ``nonfinite``: ``"skip"`` (default) skips the step and counts it,
and adaptive clippers leave their history untouched; ``"raise"`` raises
:class:`~autoclip.errors.NonFiniteGradientError` (this one check does sync the host, as
torch's ``error_if_nonfinite`` does). Adaptive clippers may also skip norm spikes
(``spike="skip"``). What a skip does:

* ``clipper(parameters)`` zeroes that step's gradients (it cannot stop the optimizer);
* ``clipper.attach(optimizer)`` skips the optimizer step itself: weights, moments, step
  counters and weight decay are left bit-identical (see :mod:`autoclip.clippers._attach`).

Writing a clipper: subclass :class:`BaseClipper` (or :class:`NormBasedClipper`, deciding only
the threshold in ``_observe``), register it with ``register_clipper``, and implement
``_clip(params, grads, total, finite)``: clip ``grads`` in place and return ``(threshold,
clipped)`` or ``(threshold, clipped, keep)`` (0-dim tensors; ``keep`` False asks for the step
to be skipped; with the 2-tuple, ``keep`` is ``finite``). Adaptive clippers also implement
``_observe(total, finite) -> (threshold, spike or None)`` and ``_initial_state``.

Mixed precision: ``clipper(parameters, grad_scale=s, found_inf=f)`` takes gradients still
multiplied by a loss scale ``s`` (what ``GradScaler`` hands a fused optimizer); the clipper
measures and clips the unscaled gradients, and a step with ``f > 0`` (the scaler skips it) is
neither counted nor entered into the adaptive history. ``attach`` passes them by itself.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from autoclip import functional as F
from autoclip.clippers._result import ClipResult
from autoclip.clippers._state import _ClipperState
from autoclip.errors import ConfigError, NonFiniteGradientError, UnsupportedError

NONFINITE_POLICIES = ("skip", "raise")
# Tests set this to False to run the accelerator path (no host reads) on CPU.
_HOST_PATH = True
# Shared flags for host-side steps whose outcome is known without a kernel (never mutated).
_TRUE = torch.ones((), dtype=torch.bool)
_FALSE = torch.zeros((), dtype=torch.bool)
SPIKE_POLICIES = ("clip", "skip")


class BaseClipper(_ClipperState, abc.ABC):
    """Base class: subclasses implement :meth:`_clip` and, if adaptive, :meth:`_observe`.

    The lifecycle is in the module docstring. A clipper that halves every gradient, and its
    round trip through ``config`` and ``state_dict``:

    >>> import torch
    >>> class Halve(BaseClipper):
    ...     def _clip(self, params, grads, total, finite):
    ...         for g in grads:
    ...             g.mul_(0.5)
    ...         return torch.tensor(0.5), torch.tensor(True)
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> p.grad = torch.tensor([4.0])
    >>> clip = Halve()
    >>> _ = clip([p])
    >>> p.grad.item(), int(clip.steps), int(clip.clipped)
    (2.0, 1, 1)
    >>> opt = torch.optim.SGD([p], lr=1.0)
    >>> handle = clip.attach(opt)  # now clips before every opt.step()
    >>> opt.step(); handle.remove()
    >>> p.item()  # the step used the halved gradient, 2.0 -> 1.0
    -1.0
    """

    #: Registry name, set by :func:`autoclip.clippers.register_clipper`.
    name: ClassVar[str] = ""
    #: Whether the threshold adapts to the norms it sees (and so has state to warm-start).
    adaptive: ClassVar[bool] = False
    #: Whether clipping commutes with scaling every gradient by one factor (norm-based
    #: clippers): loss-scaled gradients are then measured as they are and only the norm is
    #: divided by the scale; the others unscale the gradients in place first.
    scale_invariant: ClassVar[bool] = False
    #: Whether the clipper handles DTensor (FSDP2) gradients.
    supports_dtensor: ClassVar[bool] = True

    def __init__(self, *, norm_type: float = 2.0, nonfinite: str = "skip") -> None:
        self.norm_type = norm_type
        self.nonfinite = nonfinite
        if not (isinstance(norm_type, int | float) and norm_type > 0):  # NaN fails too
            raise ConfigError(f"`norm_type` must be a number > 0 or inf, but got {norm_type!r}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(
                f"`nonfinite` must be one of {NONFINITE_POLICIES}, but got {nonfinite!r}"
            )
        self._state: dict[str, Tensor] = {
            "steps": torch.zeros((), dtype=torch.long),
            "skipped": torch.zeros((), dtype=torch.long),
            "clipped": torch.zeros((), dtype=torch.long),
            "spikes": torch.zeros((), dtype=torch.long),
        }
        self._state.update(self._initial_state())
        # Finite host steps (and clipped ones) not yet added to _state: a Python int is
        # cheaper than a tensor op per step; folded in whenever the state is read.
        self._host_steps = 0
        self._host_clipped = 0
        self._loss: Tensor | None = None
        self._pending_loss: Tensor | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def _initial_state(self) -> dict[str, Tensor]:
        """Adaptive state tensors (on the host until the first call moves them)."""
        return {}

    def _total_norm(self, grads: list[Tensor]) -> Tensor:
        """The pre-clip global norm (overridden where clipping can share the pass)."""
        return F.total_norm(grads, self.norm_type)

    @abc.abstractmethod
    def _clip(
        self, params: list[Tensor], grads: list[Tensor], total: Tensor, finite: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Clip ``grads`` in place (zero them where the step is skipped); return
        ``(threshold, clipped, keep)`` as tensors, ``keep`` False for a skipped step
        (``(threshold, clipped)`` is accepted too: then ``keep`` is ``finite``)."""

    @property
    def may_skip(self) -> bool:
        """Whether this clipper can ask for a step to be skipped (so ``attach`` guards it)."""
        return (
            self.nonfinite == "skip"
            or getattr(self, "spike", "clip") == "skip"
            or getattr(self, "loss_z", None) is not None
        )

    def observe_loss(self, loss: Tensor) -> None:
        """Hand this step's loss to the next call (the ``attach`` hook has no loss to pass);
        used by clippers with a loss guard (``loss_z``), ignored by the others."""
        self._pending_loss = loss

    # -- the contract ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        parameters: Tensor | Iterable[Tensor],
        *,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
        loss: Tensor | None = None,
    ) -> ClipResult:
        """Clip the gradients of ``parameters`` in place.

        Args:
            grad_scale: the loss scale the gradients still carry (a fused optimizer's
                ``optimizer.grad_scale`` under ``GradScaler``); the unscaled gradients are
                measured and clipped. Norm-based clippers leave the gradients scaled (the fused
                step unscales them); the others unscale them in place (see ``unscaled_``).
            found_inf: the scaler's ``found_inf``; a step with ``found_inf > 0`` is skipped by
                the scaler and is neither counted nor entered into the history.
            loss: this step's loss, for a clipper that also guards against loss spikes
                (``loss_z``); with ``attach``, hand it over with :meth:`observe_loss`.
        """
        self._loss, self._pending_loss = (self._pending_loss if loss is None else loss), None
        params, grads = F.grads_of(parameters)
        if not self.supports_dtensor and any(F._is_dtensor(g) for g in grads):
            raise UnsupportedError(
                f"{type(self).__name__} does not support DTensor (FSDP2) gradients; use "
                "NormClip, ValueClip, QuantileClip or ZScoreClip"
            )
        #: whether this call divided the gradients by ``grad_scale`` in place
        self.unscaled_ = False
        if grad_scale is not None and not self.scale_invariant and grads:
            F.scale_(grads, grad_scale.reciprocal())
            self.unscaled_, grad_scale = True, None
        total = self._total_norm(grads)
        if grad_scale is not None:
            total = total / grad_scale.to(device=total.device, dtype=total.dtype)
        self._to(total.device)
        if _HOST_PATH and found_inf is None and total.device.type == "cpu":
            return self._host_step(params, grads, total)
        # A norm is >= 0 or NaN, so one comparison is isfinite (which costs four small ops).
        finite = total < math.inf
        counted = None if found_inf is None else found_inf.to(total.device) <= 0
        if self.nonfinite == "raise":
            bad = ~finite if counted is None else ~finite & counted
            if bool(bad):
                self._raise_nonfinite(total)
        if counted is not None:
            finite = finite & counted
        threshold, clipped, keep = self._clip3(params, grads, total, finite)
        if self.nonfinite == "skip" or counted is not None:
            F.zero_nonfinite_(grads, finite, host_branch=_HOST_PATH)
        skipped = ~keep
        clipped = clipped & keep
        st = self._state
        if counted is None:
            st["steps"] += 1
            st["skipped"] += skipped
        else:
            st["steps"] += counted
            st["skipped"] += skipped & counted
        st["clipped"] += clipped
        st["spikes"] += skipped & finite  # finite but skipped: a spike under spike="skip"
        result = ClipResult(total, threshold, clipped, finite, skipped)
        self.last_result_ = result
        return result

    def _host_step(self, params: list[Tensor], grads: list[Tensor], total: Tensor) -> ClipResult:
        """The step for gradients in host memory, where reading a value costs nothing: one
        read of the norm, then a finite step (the common case) skips the skip bookkeeping."""
        self._total_f = total.item()
        ok = math.isfinite(self._total_f)
        if not ok and self.nonfinite == "raise":
            self._raise_nonfinite(total)
        finite = _TRUE if ok else _FALSE
        threshold, clipped, keep = self._clip3(params, grads, total, finite)
        st = self._state
        if keep is _TRUE:
            if clipped is _TRUE or clipped is _FALSE:  # decided on the host: count it there
                self._host_clipped += clipped is _TRUE
            else:
                st["clipped"] += clipped
            self._host_steps += 1
            result = ClipResult(total, threshold, clipped, finite, _FALSE)
        else:
            if not ok:
                for g in grads:  # clipping multiplied them by 0: this clears the NaN/inf ones
                    g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            skipped = ~keep
            clipped = clipped & keep
            st["steps"] += 1
            st["skipped"] += skipped
            st["clipped"] += clipped
            st["spikes"] += skipped & finite
            result = ClipResult(total, threshold, clipped, finite, skipped)
        self.last_result_ = result
        return result

    def _clip3(self, params, grads, total, finite) -> tuple[Tensor, Tensor, Tensor]:
        out = self._clip(params, grads, total, finite)
        # (threshold, clipped) from a subclass written before skip policies: keep = finite.
        return out if len(out) == 3 else (*out, finite)

    def _raise_nonfinite(self, total: Tensor) -> None:
        raise NonFiniteGradientError(
            f"the total norm of order {self.norm_type} of the gradients is non-finite "
            f"({total.item()}); fix the loss or learning rate, or set nonfinite='skip' "
            "to skip such steps instead"
        )

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.utils.hooks.RemovableHandle:
        """Clip the optimizer's parameters before every ``optimizer.step()``.

        Uses ``Optimizer.register_step_pre_hook`` (and a post hook when a skip policy is on);
        call ``.remove()`` on the returned handle to detach. A skipped step (non-finite under
        ``nonfinite="skip"``, a spike under ``spike="skip"``) leaves the optimizer's weights
        and state bit-identical. With ``torch.amp.GradScaler``: for a plain or foreach
        optimizer ``scaler.step(optimizer)`` unscales before the step, and a step the scaler
        skips is not seen at all; for a fused optimizer the clipper reads the
        ``grad_scale``/``found_inf`` the scaler hands it and measures unscaled norms. The
        latest result is kept in ``last_result_``.
        """
        from autoclip.clippers._attach import attach

        return attach(self, optimizer)

    def warm_start(self, norms: Sequence[float] | Tensor) -> BaseClipper:
        """Feed previously observed total norms through the adaptive state (no clipping).

        Non-finite values are ignored, as they would be during training. Returns ``self``.
        """
        if not self.adaptive:
            return self
        values = torch.as_tensor(norms, dtype=torch.float32).flatten()
        device = self._state["steps"].device
        for v in values.to(device):
            self._observe(v, torch.isfinite(v))  # a warm-start norm is never a skipped spike
        return self

    def _observe(self, total: Tensor, finite: Tensor) -> tuple[Tensor, Tensor | None]:
        """Update adaptive state with one total norm; return ``(threshold, spike)`` for that
        step, ``spike`` a bool tensor (a spike to skip under ``spike="skip"``) or None."""
        raise NotImplementedError

    # -- config ------------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [n for n, p in sig.parameters.items() if n != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as stored (scikit-learn's convention)."""
        return {n: getattr(self, n) for n in self._param_names()}

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": ..., **params}``; ``create_clipper(**config)`` rebuilds this clipper."""
        return {"name": self.name, **self.get_params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
