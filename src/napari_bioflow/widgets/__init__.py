"""napari dock widgets: thin front ends over the engine (no training or prediction logic here).

train.TrainWidget and predict.PredictWidget are the npe2 entry points (see napari.yaml). fields.py binds magicgui
widgets to RunConfig fields, layers.py holds the layer choosers, jobs.py what the thread workers run, chart.py the
live chart, preview.py the field-of-view preview, shared.py the "model just trained" hand-over.
"""
