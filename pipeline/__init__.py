"""trialsync's domain: parsing, canonical hashing, version planning and the registry edge.

Everything here except ``pipeline.registry`` is pure: no network, disk, clock or Prefect.
Time and ids are passed in by the caller.
"""
