"""The web dashboard the service serves itself, for owners, merchants and the operator.

Sign-in exchanges the role's API key (typed into a form, sent once in a POST body)
for a short-lived session: a random id in an HttpOnly, SameSite=Strict cookie whose
hash is stored (`sessions`). Pages are rendered on the server (Jinja2, autoescaped:
every name, description and metadata value a user typed is text, never markup);
charts are SVG drawn on the server (`charts`). No script runs and nothing is loaded
from another host: the Content-Security-Policy allows only this origin's stylesheet.
"""
