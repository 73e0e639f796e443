"""The paper's comparisons on the embedded data or MPII: `python -m train.experiments {fig7,fig11,table2,table3}`.

* `grid`: each experiment's runs, as training configurations, and training them (skipping finished ones);
* `report`: results.csv, the figure's plot and the table from the runs' metrics;
* `cli`: the command line.
"""
