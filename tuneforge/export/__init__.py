"""`tuneforge export`: a list of registered stages run on a finished run's model (ARCHITECTURE: export is a list of
stages). `base.py` holds the interface and the loop; each other module is one stage, registered as
`@register("export", "<name>", config=Spec)` beside `configs/export/<name>.yaml`.

Layer: just above the tuning methods (cli -> runner -> export -> peft, selection, quant, precision -> ...). A stage
consumes what a method produced: it calls the method's interface (merged, save_adapter, export) through the
context and may use the shared model helpers below it; no method imports a stage.
"""
