"""INSR on 1D advection: evolve a Gaussian pulse with two integrators and plot the errors.

Run: python examples/advection1d.py   (about a minute on a laptop CPU)
Writes advection1d_error.png and advection1d_field.png in the current directory.
"""

import torch

from neuralnumerics.io import plot_error_curve, plot_field_1d
from neuralnumerics.pde import Advection1D, evolve

torch.set_num_threads(1)
problem = Advection1D()  # the INSR paper's setup: v = 0.25, pulse at -1.5, SIREN 2x20, 5000 samples
steps, dt = 20, 0.05
curves = {}
for integrator in ("midpoint", "gauss-legendre2"):
    traj = evolve(problem, dt=dt, steps=steps, integrator=integrator, seed=0)
    curves[integrator] = ([r.t for r in traj.records], [max(r.error, 1e-12) for r in traj.records])
    print(f"{integrator:>16}: error at t={steps * dt:g} is {traj.records[-1].error:.2e}, "
          f"{sum(r.seconds for r in traj.records[1:]) / steps:.2f} s per step")

plot_error_curve("advection1d_error.png", curves, title="INSR advection: error against the exact solution")
x = problem.eval_points()
plot_field_1d("advection1d_field.png", x[:, 0].numpy(), traj.field(steps)(x)[:, 0].double().numpy(),
              exact=problem.exact(x, steps * dt)[:, 0].numpy(), title=f"gauss-legendre2, t = {steps * dt:g}")
print("wrote advection1d_error.png and advection1d_field.png")
