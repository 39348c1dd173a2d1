"""The application: jobs users run, configs, the artifact store and its manifest, official compatibility.
"""
