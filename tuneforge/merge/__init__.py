"""`tuneforge merge`: several fine-tunes of one base combined into one model (model merging on task vectors).

    base.py      the method interface (Merger), the spec knobs every method shares, the coefficient search
    sources.py   what is merged: exported Hugging Face models and PEFT LoRA adapters, read tensor by tensor
                 (an adapter's task vector is its full delta s * B A), and the check that they share a base
    merge.py     the loop: task vectors per parameter -> the method's merged vector -> base + coefficient x it
    <method>/    one folder per method: task_arithmetic, ties, dare, pcb, lines (`@register("merge", ...)`)

Layer: beside `export` (cli -> runner -> export | merge -> peft ...). A finished run directory is turned into
an exported model by the runner (runner/offline.py), which also supplies the eval function of the search;
nothing here imports the runner.
"""
