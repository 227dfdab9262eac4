"""The experiments' data.

Procedural generators, jittable functions of (key or seed, step) that read no files: orientation
fringes (`fringes`), digits on a canvas (`digits`), ship scenes (`ships`). Readers of real data sets in
Kaggle's layouts: Airbus Ship Detection (`airbus`) and the 2018 Data Science Bowl (`dsb2018`), with
what the two share (`kaggle`: the run-length codec, the CSV, the split and the Grain stream).
"""
