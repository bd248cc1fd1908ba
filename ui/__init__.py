"""The dashboard's presentation: Streamlit and Plotly only (tl_core imports neither).

charts     Plotly figures from runs and metric rows (a module per kind of chart)
format     numbers, notes and messages worded for the screen
gallery    images in a grid: predictions, a confusion cell's images
report     a comparison's downloads: the one-file HTML report, CSV
run_diff   the compare page's "image by image": what one run fixed and broke against another
verdicts   the compare page's "is the difference real?": verdicts, best LRs, the seeds that would settle a pair
run_form   the New run form's options beside the strategy, training settings and the LR finder
per_class  the compare page's per-class results for the runs picked
session    the per-process store, the pages' router guard
"""
