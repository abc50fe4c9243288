"""The HTML report, pure: plain data in, one self-contained HTML string out (inline SVG, no script
or style from anywhere else, so it works offline and can be mailed as one file)."""
