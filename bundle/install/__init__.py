"""`bundle unpack` and `bundle install`, on the site: the archive checked and unpacked, then put in place.

Standard library only: both run with the server's bare python3 (even ``python3 -S``) before any venv
exists (tools/check_layers.py checks that nothing they reach imports a third-party package).
command.py runs `install`; from_archive.py takes the archive or the unpacked directory (unpack.py);
destinations.py resolves the targets and every file's destination, checked by confinement.py;
lock.py, space.py, model_files.py, venv.py (with pip_env.py) serve its steps.
"""
