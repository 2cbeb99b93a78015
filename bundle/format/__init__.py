"""The bundle format: layout names, MANIFEST.json (strict reader and writer), errors, the safe
archive reader and verify. Standard library only, importing nothing above it but stackspec/xinference.py
(the uid rule, also standard library): the offline site runs these with a bare python3.
"""
