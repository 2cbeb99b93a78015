"""`bundle plan` and `bundle diff`: what a stack, a bundle or an update will do, said before it is done.

command.py runs `plan`; report.py prints one stack's report (models, placement, VRAM, the bundle's
contents and what an unpacked bundle lacks); stacks.py reports every stack a bundle carries and
what two of them would both take; sbom_summary.py sums up the bundle's SBOM; diff.py runs `diff`
(standard library only: it runs on the site before any venv exists).
"""
