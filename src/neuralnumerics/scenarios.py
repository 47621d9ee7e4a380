"""Named scenarios the command line can run: a problem, its options and its default run settings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .pde.advection import Advection1D, gaussian_pulse
from .pde.fluid import IncompressibleFlow2D, jet_past_cylinder, taylor_green, taylor_green_multiscale
from .pde.problem import Problem

__all__ = ["Option", "Scenario", "SCENARIOS", "get_scenario"]


@dataclass(frozen=True)
class Option:
    """A scenario option, given on the command line as ``--name value`` (``_`` written as ``-``)."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None


@dataclass(frozen=True)
class Scenario:
    """A runnable simulation setup.

    Attributes:
        name: the name used on the command line.
        description: one line for ``neuralnumerics list``.
        build: makes the problem from the resolved options.
        options: the scenario's own options.
        defaults: default run settings (``dt``, ``steps``, ``integrator``, ``optimizer``, ``max_fit_iters``,
            ``rtol``, ``ftol``).
        methods: ``"insr"`` and the classical baselines that can run it.
        kind: ``"pde"`` (a :class:`~neuralnumerics.pde.Problem` marched by a time integrator), ``"fluid"``
            (an :class:`~neuralnumerics.pde.fluid.IncompressibleFlow2D` advanced by operator splitting) or
            ``"ot-flow"`` (sliced Wasserstein gradient flows of point clouds, :mod:`neuralnumerics.ot`).
    """

    name: str
    description: str
    build: Callable[[dict[str, Any]], Problem | IncompressibleFlow2D]
    options: tuple[Option, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = ("insr",)
    kind: str = "pde"

    def resolve(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The scenario's options with ``given`` values applied, checked and converted.

        Raises:
            ValueError: on an unknown option name or a value of the wrong type or outside its choices.
        """
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"scenario {self.name!r} has no option {', '.join(map(repr, unknown))}; its options are "
                             f"{', '.join(sorted(known)) or '(none)'}")
        out = {}
        for name, opt in known.items():
            value = given.get(name, opt.default)
            try:
                value = opt.type(value)
            except (TypeError, ValueError):
                raise ValueError(f"option {name!r} of scenario {self.name!r} needs a {opt.type.__name__}, "
                                 f"got {value!r}") from None
            if opt.choices is not None and value not in opt.choices:
                raise ValueError(f"option {name!r} of scenario {self.name!r} must be one of {list(opt.choices)}, "
                                 f"got {value!r}")
            out[name] = value
        return out


def _advection1d(o: dict[str, Any]) -> Advection1D:
    return Advection1D(velocity=o["velocity"], initial=gaussian_pulse(o["center"], o["width"]), length=o["length"],
                       n_points=o["n_points"], hidden_features=o["hidden_features"],
                       hidden_layers=o["hidden_layers"], boundary_weight=o["boundary_weight"])


def _flow_kwargs(o: dict[str, Any]) -> dict[str, Any]:
    return dict(n_points=o["n_points"], pressure_points=o["pressure_points"], hidden_features=o["hidden_features"],
                hidden_layers=o["hidden_layers"], pressure_omega=o["pressure_omega"])


_FLUID_OPTIONS = (
    Option("n_points", int, 128 ** 2, "sample points per fit (the paper's 128^2)"),
    Option("pressure_points", int, 4096, "how many of those points the pressure fit uses"),
    Option("hidden_features", int, 32, "SIREN width (velocity and pressure)"),
    Option("hidden_layers", int, 3, "SIREN hidden layers"),
    Option("pressure_omega", float, 10.0, "first-layer frequency of the pressure SIREN (velocity: 30)"),
    Option("scheme", str, "fused", "splitting scheme: fused (2 fits per step) or paper (3 fits)", ("fused", "paper")),
    Option("divergence_weight", float, 0.1, "weight of a div u penalty in the projection fit (0: the paper's)"),
    Option("grid_cells", int, 0, "cells across the grid baseline (0: as much memory as the two SIRENs' weights)"),
)


def _fluid_options(**defaults) -> tuple[Option, ...]:
    """The fluid options with some defaults changed."""
    return tuple(replace(o, default=defaults[o.name]) if o.name in defaults else o for o in _FLUID_OPTIONS)


# the velocity fits stop when 25 L-BFGS iterations gain less than 1% (ftol), at the latest after 300
_FLUID_DEFAULTS = {"dt": 0.05, "steps": 100, "optimizer": "lbfgs", "max_fit_iters": 300, "rtol": 1e-4, "ftol": 1e-2}

SCENARIOS: dict[str, Scenario] = {
    "advection1d": Scenario(
        name="advection1d",
        description="1D advection of a Gaussian pulse (INSR paper, Sec. 5.1): u_t + v u_x = 0, exact solution known",
        build=_advection1d,
        options=(
            Option("velocity", float, 0.25, "advection speed v"),
            Option("length", float, 4.0, "domain length L; the domain is [-L/2, L/2]"),
            Option("center", float, -1.5, "initial pulse centre"),
            Option("width", float, 0.1, "initial pulse width (standard deviation)"),
            Option("n_points", int, 5000, "sample points per fit"),
            Option("hidden_features", int, 20, "SIREN width"),
            Option("hidden_layers", int, 2, "SIREN hidden layers"),
            Option("boundary_weight", float, 1.0, "weight of the zero-boundary residual"),
            Option("grid_cells", int, 0, "cells of the grid baseline (0: as many as the SIREN has weights)"),
            Option("grid_scheme", str, "semi-lagrangian", "scheme of the grid baseline",
                   ("upwind", "lax-wendroff", "crank-nicolson", "semi-lagrangian")),
        ),
        defaults={"dt": 0.05, "steps": 240, "integrator": "midpoint", "optimizer": "lm"},
        methods=("insr", "grid"),
    ),
    "fluid-taylor-green": Scenario(
        name="fluid-taylor-green",
        description="2D Euler flow, the Taylor-Green vortex on [-1, 1]^2 (INSR paper, Sec. 5.2); steady, analytic",
        build=lambda o: taylor_green(**_flow_kwargs(o)),
        options=_FLUID_OPTIONS, defaults=_FLUID_DEFAULTS, methods=("insr", "grid"), kind="fluid",
    ),
    "fluid-taylor-green-multiscale": Scenario(
        name="fluid-taylor-green-multiscale",
        description="2D Euler flow, Taylor-Green vortices of two sizes (INSR paper, Sec. 5.2)",
        build=lambda o: taylor_green_multiscale(o["scale"], **_flow_kwargs(o)),
        # the gaps of the initial condition are divergent: a finer pressure removes that (docs/fluids.md)
        options=_fluid_options(pressure_points=128 ** 2, pressure_omega=30.0)
        + (Option("scale", float, 8.0, "size ratio of the two vortex cells"),),
        defaults=_FLUID_DEFAULTS, methods=("insr", "grid"), kind="fluid",
    ),
    "fluid-jet-cylinder": Scenario(
        name="fluid-jet-cylinder",
        description="2D Euler flow, a jet from the floor of a closed box hitting a disc",
        build=lambda o: jet_past_cylinder(speed=o["speed"], width=o["width"], **_flow_kwargs(o)),
        options=_FLUID_OPTIONS + (Option("speed", float, 0.5, "jet speed"),
                                  Option("width", float, 0.2, "nozzle width")),
        defaults=_FLUID_DEFAULTS, methods=("insr", "grid"), kind="fluid",
    ),
}


def _flow_spec(o: dict[str, Any]) -> dict[str, Any]:
    """The gradient-flow scenario's check of its options (the clouds are drawn by the runner, from the seed)."""
    from .gallery.clouds import CLOUD_SHAPES
    from .ot.flow import ESTIMATORS

    for key in ("source", "target"):
        if o[key] not in CLOUD_SHAPES:
            raise ValueError(f"option {key!r}: unknown shape {o[key]!r}; choose one of {', '.join(CLOUD_SHAPES)}")
    names = tuple(ESTIMATORS) if o["estimators"] == "all" else tuple(e.strip() for e in o["estimators"].split(","))
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown or not names:
        raise ValueError(f"option 'estimators': unknown {unknown}; give 'all' or a comma-separated list of "
                         f"{', '.join(ESTIMATORS)}")
    for key in ("n_points", "n_projections", "eval_every"):
        if o[key] < 1:
            raise ValueError(f"option {key!r} must be at least 1, got {o[key]}")
    if o["p"] < 1:
        raise ValueError(f"option 'p' must be >= 1, got {o['p']}")
    return {"estimators": names}


SCENARIOS["sw-flow"] = Scenario(
    name="sw-flow",
    description="sliced Wasserstein gradient flows of a point cloud to a target, plain and with control variates "
                "(Nguyen & Ho, ICLR 2024, Sec. 4.1)",
    build=_flow_spec,
    options=(
        Option("source", str, "sphere", "shape of the starting cloud (sphere, torus, cube, trefoil, helix)"),
        Option("target", str, "trefoil", "shape of the target cloud"),
        Option("n_points", int, 1000, "points per cloud"),
        Option("separation", float, 6.0, "distance between the two clouds' centres"),
        Option("n_projections", int, 10, "directions per step (the paper's L = 10)"),
        Option("p", float, 2.0, "order of the sliced Wasserstein distance"),
        Option("directions", str, "uniform", "how directions are drawn", ("uniform", "orthogonal", "qmc")),
        Option("estimators", str, "all", "'all' or a comma-separated list of sw, lcv-sw, ucv-sw"),
        Option("eval_every", int, 100, "steps between exact W2 evaluations"),
    ),
    defaults={"dt": 0.01, "steps": 3000, "checkpoint_every": 100},
    methods=("sliced-flow",), kind="ot-flow",
)


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``.

    Raises:
        ValueError: naming the known scenarios when ``name`` is not one of them.
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(sorted(SCENARIOS))} "
                         f"(neuralnumerics list shows them)") from None
