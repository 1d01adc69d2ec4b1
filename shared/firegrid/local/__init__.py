"""The local emulator stack: Firestore and Cloud Storage emulators, every
function on one port, a trigger router and a scheduler loop, on 127.0.0.1.

The Python API lives in :mod:`firegrid.local.stack` (``start_stack``,
``stop_stack``, ``load_stack``, ``wipe``); each server is its own module with a
``main()`` so the stack can run it as a detached ``python -m`` process.
"""
