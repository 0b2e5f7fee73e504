"""trajscope.store"""
