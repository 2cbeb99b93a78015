"""The stack spec: what a stack file may say, and what it means.

The bottom layer (it imports pydantic, PyYAML and the standard library only; never pulumi,
never bundle, never components). Modules, bottom to top:

  xinference  the rules of the pinned Xinference: uid, model types, endpoint form, config
              namespace, container port and models mount, docker host address forms
  errors      Problem and ConfigError
  values      strict value types of the schema (numbers, GPU ids, paths)
  problems    pydantic errors -> Problems (field path, value, message, fix)
  config      the schema (StackConfig and its parts)
  placement   host GPU ids -> container indices, VRAM budgets
  launch      config -> launch specs, container env and command, endpoint
  rules       the cross-field rules
  load        raw config mapping -> StackConfig (schema, then rules), every problem at once
  stack_yaml  the one reader of stack files (read as Pulumi reads them)
  source      stack files on disk, the endpoint's CA file
  reference   the README's config reference, generated from the schema
"""
