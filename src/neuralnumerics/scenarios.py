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
            (an :class:`~neuralnumerics.pde.fluid.IncompressibleFlow2D` advanced by operator splitting),
            ``"elasticity"`` (an :class:`~neuralnumerics.pde.elasticity.Elasticity` body, implicit Euler by
            energy minimisation) or ``"ot-flow"`` (sliced Wasserstein gradient flows of point clouds,
            :mod:`neuralnumerics.ot`).
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


def _material_kwargs(o: dict[str, Any]) -> dict[str, Any]:
    return dict(material=o["material"], arap_weight=o["arap_weight"], volume_weight=o["volume_weight"],
                young=o["young"], poisson=o["poisson"], n_points=o["n_points"], hidden_features=o["hidden_features"],
                hidden_layers=o["hidden_layers"], first_omega=o["first_omega"])


def _elastic_options(**defaults) -> tuple[Option, ...]:
    """Options every elasticity scenario has, with some defaults changed."""
    common = (
        Option("material", str, "arap", "elastic energy: arap (+ volume term, the paper's) or neo-hookean",
               ("arap", "neo-hookean")),
        Option("arap_weight", float, 1.0, "weight of the ARAP energy (the paper's ratio_arap)"),
        Option("volume_weight", float, 1e3, "weight of the volume term (det F - 1)^2 (the paper's ratio_volume)"),
        Option("young", float, 1e3, "Young's modulus of the neo-hookean material"),
        Option("poisson", float, 0.4, "Poisson's ratio of the neo-hookean material"),
        Option("n_points", int, 4096, "quadrature points inside the body per fit"),
        Option("hidden_features", int, 68, "SIREN width (the paper's 68)"),
        Option("hidden_layers", int, 3, "SIREN hidden layers (the paper's 3)"),
        Option("first_omega", float, 3.0, "first-layer frequency of the SIREN"),
        Option("fem_cells", int, 0, "cells across the FEM mesh (0: as many floats of state as the SIREN has weights)"),
    )
    return tuple(replace(o, default=defaults[o.name]) if o.name in defaults else o for o in common)


def _elastic_stretch(o: dict[str, Any]):
    from .pde.bodies import BoxBody
    from .pde.elasticity import Constraint, Elasticity

    body = BoxBody((-1.0, -1.0), (1.0, 1.0), name="square")
    n = o["constraint_points"]
    if n < 1:
        raise ValueError(f"option 'constraint_points' must be at least 1, got {n}")
    left = Constraint("left", body.face(0, 0, n), (0.0, 0.0), o["constraint_stiffness"], 2.0,
                      region=lambda X: (X[:, 0] + 1).abs() < 1e-9)
    right = Constraint("right", body.face(0, 1, n), (o["offset"], 0.0), o["constraint_stiffness"], 2.0,
                       ramp_steps=o["ramp_steps"], region=lambda X: (X[:, 0] - 1).abs() < 1e-9)
    return Elasticity(body, constraints=[left, right], static=True, name="elasticity-stretch-2d",
                      **_material_kwargs(o))


def _elastic_collide(o: dict[str, Any]):
    from .pde.bodies import BODIES
    from .pde.elasticity import Elasticity
    from .pde.obstacles import Sphere

    body = BODIES[o["shape"]]()
    return Elasticity(body, density=o["density"], gravity=(0.0, -o["gravity"]), force_steps=o["force_steps"] or None,
                      obstacles=[Sphere((o["sphere_x"], o["sphere_y"]), o["sphere_radius"])],
                      contact_stiffness=o["contact_stiffness"], name="elasticity-collide-2d", **_material_kwargs(o))


def _elastic_drop(o: dict[str, Any]):
    from .pde.bodies import BODIES, load_mesh
    from .pde.elasticity import Elasticity
    from .pde.obstacles import Plane

    body = load_mesh(o["mesh"], dim=3, normalize=True) if o["mesh"] else BODIES[o["shape"]]()
    if body.dim != 3:
        raise ValueError(f"elasticity-drop-3d needs a 3D body; {body.name!r} is {body.dim}D")
    floor = body.lo[2] - o["height"]
    return Elasticity(body, density=o["density"], gravity=(0.0, 0.0, -o["gravity"]), obstacles=[Plane(floor)],
                      contact_stiffness=o["contact_stiffness"], name="elasticity-drop-3d", **_material_kwargs(o))


_ELASTIC_FIT = {"optimizer": "lbfgs", "rtol": 0.0}

SCENARIOS["elasticity-stretch-2d"] = Scenario(
    name="elasticity-stretch-2d",
    description="2D hyperelastic square pinned on the left, its right side pulled (INSR paper, Sec. 5.3); static",
    build=_elastic_stretch,
    options=_elastic_options() + (
        Option("offset", float, 2.0, "how far the right side is pulled along x (the paper's 2)"),
        Option("ramp_steps", int, 0, "steps over which the pull grows linearly (0: all at once, the paper's)"),
        Option("constraint_stiffness", float, 400.0,
               "penalty per unit length on the held sides (400: the paper's 1e4 on its sample sums)"),
        Option("constraint_points", int, 100, "points per held side"),
        Option("fem_substeps", int, 10, "load increments per step of the FEM baseline (it needs them at large pulls)"),
    ),
    defaults={"dt": 1.0, "steps": 1, "max_fit_iters": 3000, "ftol": 1e-7, **_ELASTIC_FIT},
    methods=("insr", "fem"), kind="elasticity",
)

SCENARIOS["elasticity-collide-2d"] = Scenario(
    name="elasticity-collide-2d",
    description="2D hyperelastic body pushed down onto a disc (INSR paper, Sec. 5.3): implicit Euler, penalty contact",
    build=_elastic_collide,
    options=_elastic_options(arap_weight=20.0) + (
        Option("shape", str, "square", "the body", ("square", "disc")),
        Option("density", float, 20.0, "mass per unit area (the paper's 2 x ratio_kinematics)"),
        Option("gravity", float, 10.0, "downward acceleration (the paper's force 2e2 / density)"),
        Option("force_steps", int, 2, "steps during which gravity acts (the paper's T_ext; 0: always)"),
        Option("contact_stiffness", float, 1e4, "penalty stiffness per unit area (the paper's ratio_collide)"),
        Option("sphere_x", float, 0.0, "disc centre x"),
        Option("sphere_y", float, -2.0, "disc centre y"),
        Option("sphere_radius", float, 1.0, "disc radius"),
    ),
    defaults={"dt": 0.1, "steps": 20, "max_fit_iters": 300, "ftol": 1e-6, **_ELASTIC_FIT},
    methods=("insr", "fem"), kind="elasticity",
)

SCENARIOS["elasticity-drop-3d"] = Scenario(
    name="elasticity-drop-3d",
    description="3D hyperelastic solid (procedural shape or your tetrahedral mesh) dropped onto the ground plane",
    build=_elastic_drop,
    options=_elastic_options(material="neo-hookean", hidden_features=48, n_points=4096) + (
        Option("shape", str, "capsule", "procedural solid", ("capsule", "torus", "blob", "cube")),
        Option("mesh", str, "", "a tetrahedral mesh file (.mesh, .msh, .vtu, ...) to use instead of the shape"),
        Option("density", float, 1.0, "mass per unit volume"),
        Option("gravity", float, 9.8, "downward acceleration"),
        Option("height", float, 0.3, "gap between the body and the floor at the start"),
        Option("contact_stiffness", float, 1e6, "penalty stiffness per unit volume (the capsule sinks 0.02 into the floor; 0.04 with 1e5)"),
    ),
    defaults={"dt": 0.02, "steps": 40, "max_fit_iters": 200, "ftol": 1e-6, **_ELASTIC_FIT},
    methods=("insr", "fem"), kind="elasticity",
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
