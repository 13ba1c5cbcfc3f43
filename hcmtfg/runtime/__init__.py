"""Process-level machinery: devices, compilation, memory, exit, fault points.

  sharding.py        the ('data',) mesh over every device of every host
  compile_cache.py   JAX's persistent compilation cache, hit and compile counts
  exported.py        jax.export of the chunk steps and kernel transforms
  allocator.py       glibc malloc keeps freed memory (inference entry points)
  quick_exit.py      a finished command skips the interpreter's teardown
  faults.py          named fault points for the fault-injection tests

Imports: `models` and the root modules.
"""
