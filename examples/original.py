"""The original ivy's README example ("Version 2 quick example"), transcribed to Python with only
the syntax changed: the same registration with its options dict, the same producer/worker split
chosen by NODE_ENV, the same IronMQ listen configuration with a per-task reserveTime.

The README's placeholder Redis URL (``redis://name:password@hostname:port``) is read from
``REDIS_URL`` here, and the producer's queue (which the original's README leaves out) from
``IVY_QUEUE_URL``, as for any ivy program; IronMQ's host comes from ``IRON_HOST`` /
``IRON_PORT`` / ``IRON_PROTOCOL`` or iron.json, as the iron-mq client reads them::

    NODE_ENV=worker IRONMQ_TOKEN=... REDIS_URL=redis://127.0.0.1:6379/0 \\
        python examples/original.py
    NODE_ENV=producer IRONMQ_TOKEN=... IRON_TOKEN=... IRON_PROJECT_ID=testpackage \\
        IVY_QUEUE_URL=ironmq:// REDIS_URL=redis://127.0.0.1:6379/0 python examples/original.py

The producer exits once its callback ran: ivy's default instance waits, at exit, for calls whose
callbacks are due (as a Node.js process stays up for them).
"""

import os

import ivy


def factorial(number, callback):
    callback(None, 42)


def finished(result):
    print('result is', result)


# task must be explicitly registered for now
# we'd like to change that in the future

# Also, task must be both available and registered on both client
# and producer

# ...and name must be unique globally. "package.module.submodule.function"
# pattern is highly encouraged.
ivy.register_task(factorial, finished, {
    'name':   'testpackage.factorial',
    'queue':  'testpackage',
    'route':  'testpackage.route1',
    'priority': 0,
    'retry':    True,
    'maxRetries': 10
})

if os.environ.get('NODE_ENV') == 'producer':
    ivy.start_notification_consumer({
        'type': 'redis',
        'url':  os.environ.get('REDIS_URL', 'redis://name:password@hostname:port')
    })

    # execute task
    ivy.delayed_call(factorial, 5, lambda err, result:
                     print("Factorial result is", result))

elif os.environ.get('NODE_ENV') == 'worker':
    ivy.start_notification_producer({
        'type': 'redis',
        'url':  os.environ.get('REDIS_URL', 'redis://name:password@hostname:port')
    })
    ivy.listen({
        'queue': 'testpackage',

        'type': 'ironmq',
        'auth': {
            'token':      os.environ.get('IRONMQ_TOKEN') or 'dummy',
            'project_id': os.environ.get('IRONMQ_PROJECT') or 'testpackage'
        },

        # optional
        'messages': {
            'testpackage.factorial': {
                'reserveTime': 60 * 60
            }
        }

    })
