"""Kernel bindings (csrc/) with their plain torch references: below model/ and parallel/, which both use them."""
