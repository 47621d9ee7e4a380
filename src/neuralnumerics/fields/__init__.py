"""Neural fields, differential operators on fields, and flat-weight helpers."""

from .ops import Field, directional_derivative, divergence, gradient, jacobian, laplacian, linear_combination
from .params import flat_params, functional_field, load_flat_params, param_count, unflatten_params
from .siren import SIREN, SirenJet

__all__ = [
    "SIREN", "SirenJet", "Field", "jacobian", "gradient", "divergence", "laplacian", "directional_derivative",
    "linear_combination",
    "flat_params", "load_flat_params", "unflatten_params", "param_count", "functional_field",
]
