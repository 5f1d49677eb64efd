"""Jinja2 templates of kreport, installed as package data of `kreport.templates`."""
