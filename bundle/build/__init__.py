"""`bundle build`, `sign` and `pack`, on the online machine: gather what a bundle holds, sign it, pack it.

command.py runs `build`; fetch.py (models from the hubs), docker_image.py (the image tar),
image_env.py (the image's Python), engine_wheels.py with stub_wheel.py and resolving_python.py
(a model's engine packages), wheel_lock.py (the site venv's wheels), pulumi_release.py (the
Pulumi CLI and plugins), program.py (the program's files) and sbom.py gather its parts;
sign.py and pack.py (one archive) make it ready to carry.
"""
