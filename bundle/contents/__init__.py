"""What a bundle holds: pure functions of the stack configs (no downloads, no writes).

items.py: what one stack's bundle holds (each item's path and role); stacks.py: what one bundle for
several stacks holds (their items merged, each stack's own facts, what two stacks would both take).
The one part of bundle/ (besides bundle/format/) that components/ and __main__.py may import
(tools/check_layers.py enforces it): the commands (build/, install/, plan/) stay out of the program.
"""
