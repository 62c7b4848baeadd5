"""Stage export (rules/export.smk): the deploy net with BatchNorm/Scale folded, checked against the trained net."""
