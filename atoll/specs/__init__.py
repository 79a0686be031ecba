"""Plain spec types (pydantic models loaded from YAML), imported by every layer.

- :mod:`atoll.specs.common`: YAML loading with errors that name the file and the field path.
- :mod:`atoll.specs.node`: an agent's node.yaml and the coordinator's settings.
- :mod:`atoll.specs.workflow`, :mod:`atoll.specs.cluster`, :mod:`atoll.specs.catalog`: the
  planner's problem (workflow DAG, node pools and links, variant catalog).
- :mod:`atoll.specs.assignment`, :mod:`atoll.specs.routing`: plain values the coordinator
  computes and the other side acts on (what a node must hold and its generation; the routing
  table).
"""
