def warm():
    import vitsearch.train  # noqa: F401
