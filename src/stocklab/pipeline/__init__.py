"""The one path between raw bars and a logged model, shared by every job:

inputs     raw bars -> features -> split -> train-only scaler -> WindowSet; the Bundle a
           logged model rebuilds its inputs from; a study worker's InputCache
fitting    train_in_run: fit one model (every walk-forward fold) inside the caller's run
scoring    a split's predictions as a frame, and their metrics
artifacts  what a run logs besides metrics (predictions, plots, tear sheet, the model)
logged     loading a logged model with its Bundle; completing a tune trial into one
"""
