"""The paper's comparisons on the embedded data or MPII: `python -m train.experiments {fig7,fig11,table2,table3}`.

* `grid`: each experiment's runs, as training configurations, and training them (skipping finished ones);
* `report`: results.csv, the figure's plot and the table from the runs' metrics;
* `cli`: the command line;
* `ceilings`: `python -m train.experiments.ceilings`, the PCKh that HM's and DSNT's decoding alone allow per map
  side on a dataset or MPII's valid.h5 (the low-resolution end of Fig. 7).
"""
