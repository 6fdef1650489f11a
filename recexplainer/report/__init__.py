"""The last stage: tables and plots over every stage folder (``tables``), the self-contained HTML page
(``html``) and the summary the command line prints after a run (``summary``)."""
