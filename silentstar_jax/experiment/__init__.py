"""`python experiment.py`: a thinking run, its controls, a grid and several seeds as one command.

Why: a claim "thinking helps" needs the controls trained exactly like the thinking run (same
config, same steps, same seeds), several seeds, and the same learning-rate search for every arm;
done by hand, the controls drift. Here the arms are derived from the one config (`latent` = as
given, `pause` = thinking.feedback=pause, `nothink` = thinking.enabled=false), every arm x grid
point x seed is an ordinary run directory trained by `train.py` in a subprocess
(OUT/runs/<arm>/<gridtag>/seed<S>), finished runs are skipped and unfinished ones resume, and the
report (results.md / results.json / PNGs) is rebuilt from the run directories alone.
"""
