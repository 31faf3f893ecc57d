"""The shipped configs, installed with the package as `dul_jax.configs`: `dul-jax train --config
demo` takes one by name, `dul-jax configs` lists them."""
