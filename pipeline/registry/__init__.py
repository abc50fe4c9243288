"""The registry edge: the HTTP client for ClinicalTrials.gov API v2 (``client``), its pages, bulk files and
a faithful local fake. Nothing is imported here, so that a module of the package (or ``defaults``) can be
used without the HTTP client's imports."""
