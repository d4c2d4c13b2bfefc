"""Team mode: one shared MLflow tracking server on PostgreSQL, with basic auth.

- ``settings``: the ``server`` params section and its environment overrides.
- ``database``: PostgreSQL URIs (driver, masked form), create / drop a database.
- ``auth``: the basic-auth app's config, generated at start from the environment, and a
  helper that creates users and grants them permissions.
- ``server``: start ``mlflow server`` (PostgreSQL backend store, proxied artifacts, job
  runner off, loopback and ``--allowed-hosts`` by default) and wait until it answers.
- ``cli``: ``mlplatform server`` and ``mlplatform server add-user`` (on their own:
  ``python -m mlplatform.team``).
"""
