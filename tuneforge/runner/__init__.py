"""The runner: setup -> select_data -> build_model -> build_engine -> train -> save -> teardown."""
