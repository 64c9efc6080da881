from ray_fixture import one_thread, random_model, ray_session  # noqa: F401  (fixtures shared by the Ray tests)
