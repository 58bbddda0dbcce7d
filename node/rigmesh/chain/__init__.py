"""Chain plumbing shared by the shell: local chain nodes (anvil) for devnets and tests."""
