"""napari dock widgets: thin front ends over the engine (no training or prediction logic here).

bioflow.BioflowDock (tabs Train | Predict | Batch | Runs), train.TrainWidget, predict.PredictWidget,
batch.BatchWidget and runs.RunsWidget are the npe2 entry points (see napari.yaml). Each
dock is a class in its module (run handling: start, reports, finish) made of mixins, one idea per module:
<dock>_form.py builds its fields and layout; train_view.py decides what the Train fields show; train_inputs.py,
predict_setup.py and batch_form.py turn the fields into a config, samples or a request; predict_layers.py and
batch_layers.py add the output layers. fields.py binds magicgui widgets to RunConfig fields, layers.py holds the
layer choosers, jobs.py what the thread workers run, chart.py the live chart, preview.py the field-of-view preview,
shared.py the "model just trained" hand-over. train_checks.py checks the Train fields as they change, train_config.py
loads a saved config into them, runs_index.py reads an output folder's runs (no Qt) for runs.py.
"""
