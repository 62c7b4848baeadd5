"""Stage report (rules/report.smk): the report's figures."""
